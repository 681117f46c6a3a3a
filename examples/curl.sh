#!/usr/bin/env bash
# Scripted use of kproxy with curl: start it on a free port, read the port from the startup line, wait
# until /readyz says ok, query, watch for a few seconds, read the metrics, stop it gracefully.
#
#   examples/curl.sh                                  # ~/.kube/config, current context
#   examples/curl.sh --context=kind-kind -v=6         # any kproxy flags
#
# Env: KPROXY   the binary (default: kproxy on PATH, else target/release/kproxy, else target/debug/kproxy)
#      ADMIN_PORT  admin listener port (default 9101)
#      NAMESPACE   namespace to list and watch (default: default)
set -euo pipefail
cd "$(dirname "$0")/.."

kproxy=${KPROXY:-}
if [ -z "$kproxy" ]; then
  kproxy=$(command -v kproxy || true)
  for b in target/release/kproxy target/debug/kproxy; do [ -n "$kproxy" ] || { [ -x "$b" ] && kproxy=$b; }; done
fi
[ -x "$kproxy" ] || { echo "curl.sh: no kproxy binary: build it (cargo build --release) or set KPROXY" >&2; exit 1; }
admin_port=${ADMIN_PORT:-9101}
ns=${NAMESPACE:-default}
admin="http://127.0.0.1:$admin_port"

out=$(mktemp)
# Flags given here come last, so they win over the same flags in "$@" (as in kubectl).
"$kproxy" "$@" --port=0 --admin-address="127.0.0.1:$admin_port" --access-log=text >"$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$out"' EXIT

# The startup line is the only thing kproxy prints on stdout: `Starting to serve on 127.0.0.1:PORT`.
for _ in $(seq 100); do
  line=$(head -n1 "$out")
  [ -n "$line" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "curl.sh: kproxy exited" >&2; exit 1; }
  sleep 0.1
done
port=${line##*:}
api="http://127.0.0.1:$port"
echo "== $line"

echo "== readiness ($admin/readyz)"
# 503 with a reason until the API server answers; curl retries 503s.
curl -fsS --retry 20 --retry-connrefused --retry-delay 1 "$admin/readyz"

echo "== GET /api/v1/namespaces/$ns/pods?limit=5"
curl -fsS "$api/api/v1/namespaces/$ns/pods?limit=5" \
  | (command -v jq >/dev/null && jq -r '.items[].metadata.name' || cat)

echo "== watching pods in $ns for 3 s"
# --max-time ends the watch (curl exits 28); kproxy streams each event as it arrives.
curl -sS -N --max-time 3 "$api/api/v1/namespaces/$ns/pods?watch=true&allowWatchBookmarks=true" \
  | cut -c1-120 || true

echo "== metrics"
curl -fsS "$admin/metrics" | grep -E '^kproxy_(requests_total|open_watches|upstream_connections)'

echo "== stopping (SIGTERM drains in-flight requests, ends watches at once)"
kill -TERM "$pid"
wait "$pid"
trap 'rm -f "$out"' EXIT
echo "== kproxy exited 0"
