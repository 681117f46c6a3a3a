#!/usr/bin/env bash
# Regenerates the example PKI and kubeconfigs in this directory (needs only openssl).
# The files are examples for local use and tests: never trust this CA anywhere else.
set -euo pipefail
cd "$(dirname "$0")"
days=3650

# CA
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=kproxy-example-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out ca.crt

issue() { # name subject ext-file keyfile
  openssl req -new -key "$4" -subj "$2" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
    -extfile "$3" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
ext=$(mktemp); trap 'rm -f "$ext"' EXIT

# API server certificate (EC, SEC1 key) for localhost, 127.0.0.1 and ::1
openssl ecparam -name prime256v1 -genkey -noout -out server.key
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n' > "$ext"
issue server "/CN=kube-apiserver" "$ext" server.key

# Client certificates: EC (SEC1) for the admin, RSA PKCS#1 for a second user
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$ext"
openssl ecparam -name prime256v1 -genkey -noout -out client.key
issue client "/O=system:masters/CN=example-admin" "$ext" client.key
openssl genrsa -traditional -out client-rsa.key 2048 2>/dev/null
issue client-rsa "/O=dev/CN=example-rsa" "$ext" client-rsa.key
rm -f ca.srl

b64() { base64 -w0 < "$1"; }
cat > kubeconfig.yaml <<YAML
# Client-certificate user, paths relative to this file (resolved as kubectl does).
apiVersion: v1
kind: Config
clusters:
- name: example
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: ca.crt
contexts:
- name: example-admin
  context: {cluster: example, user: example-admin, namespace: default}
- name: example-token
  context: {cluster: example, user: example-token, namespace: default}
- name: example-rsa
  context: {cluster: example, user: example-rsa}
current-context: example-admin
users:
- name: example-admin
  user:
    client-certificate: client.crt
    client-key: client.key
- name: example-token
  user:
    token: example-token
- name: example-rsa
  user:
    client-certificate-data: $(b64 client-rsa.crt)
    client-key-data: $(b64 client-rsa.key)
YAML
echo "regenerated $(pwd)"
