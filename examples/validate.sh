#!/usr/bin/env bash
# Checks the examples against a real kube-apiserver (tests/apiserver: kube-apiserver + etcd, no kubelet):
#  1. `kubectl apply --dry-run=server` accepts every object in examples/ambassador/pod.yaml;
#  2. the ServiceAccount, Role and RoleBinding are created for real, a token is issued for the
#     ServiceAccount and laid out like a mounted service-account volume, and kproxy runs in-cluster
#     style with the sidecar's own args from the manifest (kubelet's $(VAR) expansion done here);
#  3. examples/curl.sh drives that kproxy, then the least-privilege rules are checked: own pods 200,
#     pods/log 403 from RBAC, writes 403 from kproxy's filter, other namespaces 403, and each of the
#     sidecar's three probes answers 200 on its path.
# Usage: examples/validate.sh [path/to/kproxy]   (default: cargo build, then target/debug/kproxy)
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "validate.sh: FAILED: $*" >&2; exit 1; }

command -v kubectl >/dev/null || die "kubectl not found (needed for the dry-run and the RBAC objects)"
command -v jq >/dev/null || die "jq not found (apt-get install jq)"
if [ -n "${1:-}" ]; then
  kproxy=$1
else
  cargo build --locked --bin kproxy >&2
  kproxy=target/debug/kproxy
fi
[ -x "$kproxy" ] || die "no kproxy binary at $kproxy"

testenv=$(bash tests/apiserver/build.sh | tail -n1)
work=$(mktemp -d)
TESTENV_DIR="$work/env" "$testenv" >"$work/ready" 2>"$work/testenv.err" &
envpid=$!
trap 'kill "$envpid" 2>/dev/null || true; wait "$envpid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 180); do
  grep -q '^ready ' "$work/ready" 2>/dev/null && break
  kill -0 "$envpid" 2>/dev/null || { cat "$work/testenv.err" >&2; die "the test API server exited"; }
  sleep 1
done
server=$(sed -n 's/^ready //p' "$work/ready")
[ -n "$server" ] || die "the test API server did not become ready"
# kubectl as the cluster admin; kproxy below must not see this kubeconfig (it runs in-cluster style).
k() { kubectl --kubeconfig "$work/env/admin.kubeconfig" "$@"; }
unset KUBECONFIG
echo "== API server $server"

echo "== kubectl apply --dry-run=server -f examples/ambassador/pod.yaml"
k apply --dry-run=server -f examples/ambassador/pod.yaml -o json >"$work/objects.json"
jq -r '.items[] | "   \(.kind)/\(.metadata.name) ok"' "$work/objects.json"
[ "$(jq '.items | length' "$work/objects.json")" = 4 ] || die "expected 4 objects"

echo "== creating the ServiceAccount and its RBAC for real"
jq '.items |= map(select(.kind != "Pod"))' "$work/objects.json" | k apply -f - >/dev/null
ns=$(jq -r '.items[] | select(.kind=="Pod") | .metadata.namespace' "$work/objects.json")
sa=$(jq -r '.items[] | select(.kind=="Pod") | .spec.serviceAccountName' "$work/objects.json")

# What kubelet would mount at /var/run/secrets/kubernetes.io/serviceaccount.
sadir="$work/serviceaccount"
mkdir -p "$sadir"
k -n "$ns" create token "$sa" --duration=1h >"$sadir/token"
cp "$work/env/ca.crt" "$sadir/ca.crt"
echo -n "$ns" >"$sadir/namespace"
hostport=${server#https://}

# The sidecar's args, with kubelet's $(POD_NAMESPACE) expansion.
mapfile -t args < <(jq -r '.items[] | select(.kind=="Pod") | .spec.initContainers[]
  | select(.name=="kproxy") | .args[]' "$work/objects.json" | sed "s/\$(POD_NAMESPACE)/$ns/g")
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== examples/curl.sh with the sidecar's args: ${args[*]}"
KUBERNETES_SERVICE_HOST=${hostport%:*} KUBERNETES_SERVICE_PORT=${hostport##*:} \
  KPROXY_INCLUSTER_DIR="$sadir" POD_NAMESPACE="$ns" HOME="$work" \
  KPROXY="$kproxy" ADMIN_PORT="$admin_port" NAMESPACE="$ns" \
  bash examples/curl.sh "${args[@]}" >"$work/curl.out" 2>"$work/curl.err" \
  || { cat "$work/curl.out" "$work/curl.err" >&2; die "examples/curl.sh"; }
sed 's/^/   /' "$work/curl.out"
grep -q '^== kproxy exited 0' "$work/curl.out" || die "curl.sh did not finish"
grep -q 'kproxy_requests_total{method="GET",code="200"' "$work/curl.out" || die "no successful request counted"

echo "== least privilege"
KUBERNETES_SERVICE_HOST=${hostport%:*} KUBERNETES_SERVICE_PORT=${hostport##*:} \
  KPROXY_INCLUSTER_DIR="$sadir" HOME="$work" \
  "$kproxy" "${args[@]}" --port=0 --admin-address="127.0.0.1:$admin_port" >"$work/kproxy.out" 2>"$work/kproxy.err" &
kpid=$!
for _ in $(seq 100); do [ -s "$work/kproxy.out" ] && break; sleep 0.1; done
port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$work/kproxy.out")
[ -n "$port" ] || die "kproxy did not start: $(cat "$work/kproxy.err")"
api="http://127.0.0.1:$port"
expect() {
  local want=$1 what=$2; shift 2
  local got
  got=$(curl -s -o "$work/body" -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || die "$what: got $got, want $want: $(head -c 400 "$work/body")"
  echo "   $want  $what"
}
expect 200 "list pods in $ns (Role allows)" "$api/api/v1/namespaces/$ns/pods"
expect 403 "pods/log in $ns (RBAC denies the subresource)" "$api/api/v1/namespaces/$ns/pods/x/log"
expect 403 "create a pod (kproxy --reject-methods)" -X POST -H 'content-type: application/json' \
  -d '{}' "$api/api/v1/namespaces/$ns/pods"
expect 403 "pods in kube-system (kproxy --accept-paths)" "$api/api/v1/namespaces/kube-system/pods"
expect 200 "readyz" "http://127.0.0.1:$admin_port/readyz"
# Every probe of the manifest, on the path and port kubelet would use.
while read -r probe path; do
  expect 200 "$probe $path" "http://127.0.0.1:$admin_port$path"
done < <(jq -r '.items[] | select(.kind=="Pod") | .spec.initContainers[] | select(.name=="kproxy")
  | to_entries[] | select(.key | endswith("Probe")) | "\(.key) \(.value.httpGet.path)"' "$work/objects.json")
[ "$(jq '[.items[] | select(.kind=="Pod") | .spec.initContainers[] | select(.name=="kproxy")
  | to_entries[] | select(.key | endswith("Probe"))] | length' "$work/objects.json")" = 3 ] ||
  die "expected a startup, readiness and liveness probe on the kproxy sidecar"
kill -TERM "$kpid"
wait "$kpid" || die "kproxy exited non-zero"
echo "validate.sh: examples OK"
