"""The official Python client's streaming helpers (PyPI `kubernetes`, pinned in requirements.txt):
`stream()` exec over WebSocket and `portforward()`. Run by tests/e2e_streams.rs:

    python python_streams.py (--server=PROXY_URL | --kubeconfig=PATH) NAMESPACE POD

Exec runs `sh -c 'head -n 2; echo to-stderr >&2'` with two lines on stdin; the port-forward sends one
HTTP/1.0 request to the pod's port 80. Prints one JSON object: what each returned. Any error exits
non-zero with a traceback.
"""
import json
import sys

from kubernetes import client, config
from kubernetes.stream import portforward, stream

target, ns, pod = sys.argv[1], sys.argv[2], sys.argv[3]

if target.startswith("--server="):
    cfg = client.Configuration()
    cfg.host = target[len("--server="):]  # plain http to the proxy, no credentials: it adds them
else:
    cfg = client.Configuration()
    config.load_kube_config(config_file=target[len("--kubeconfig="):], client_configuration=cfg)
api = client.CoreV1Api(client.ApiClient(cfg))

# exec: stdin, stdout and stderr on their channels, then the status on the error channel.
resp = stream(
    api.connect_get_namespaced_pod_exec, pod, ns,
    command=["sh", "-c", "head -n 2; echo to-stderr >&2"],
    stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False, _request_timeout=60,
)
resp.write_stdin("one\ntwo\n")
out, err = "", ""
while resp.is_open():
    resp.update(timeout=60)
    out += resp.read_stdout() if resp.peek_stdout() else ""
    err += resp.read_stderr() if resp.peek_stderr() else ""
status = resp.read_channel(3)
resp.close()
status = json.loads(status) if status else {}

# port-forward: one HTTP/1.0 request on the forwarded socket. The WebSocket port-forward protocol has no
# per-connection close, so the answer is read up to its Content-Length rather than to EOF.
pf = portforward(api.connect_get_namespaced_pod_portforward, pod, ns, ports="80")
sock = pf.socket(80)
sock.settimeout(60)
sock.sendall(b"GET /small.txt HTTP/1.0\r\nHost: pod\r\n\r\n")
data = b""
while b"\r\n\r\n" not in data:
    data += sock.recv(65536)
head, _, body = data.partition(b"\r\n\r\n")
length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length:"))
while len(body) < length:
    body += sock.recv(65536)
sock.close()
pf.close()

print(json.dumps({
    "exec": {"stdout": out, "stderr": err, "status": status.get("status")},
    "portforward": {"status": int(head.split(b" ")[1]), "body": body.decode()},
}))
