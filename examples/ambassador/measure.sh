#!/usr/bin/env bash
# Measures what the ambassador sidecar uses, for the `resources:` of examples/ambassador/pod.yaml:
# the static binary (build/static.sh) with the manifest's own sidecar args, in-cluster style against
# the real kube-apiserver (tests/apiserver), probed as kubelet probes it.
#
#   1. idle: RSS and CPU over IDLE seconds (default 60) while the manifest's probes run at their
#      periods (readiness every 10 s, liveness every 20 s);
#   2. a small bounded load: REQUESTS (default 3000) GETs of the app's own Pod, CONCURRENCY (default 4)
#      at a time, with one watch open (an informer) the whole time: CPU, requests/s, peak RSS.
#
# Usage: examples/ambassador/measure.sh [path/to/static/kproxy]   (default: build/static.sh)
# CPU is from /proc/PID/stat (utime + stime), memory from /proc/PID/status (VmRSS, VmHWM).
set -euo pipefail
cd "$(dirname "$0")/../.."
die() { echo "measure.sh: FAILED: $*" >&2; exit 1; }
command -v kubectl >/dev/null || die "kubectl not found (needed for the dry-run that yields the args)"
command -v jq >/dev/null || die "jq not found (apt-get install jq)"
idle=${IDLE:-60} requests=${REQUESTS:-3000} concurrency=${CONCURRENCY:-4}

kproxy=${1:-$(bash build/static.sh | tail -n1)}
[ -x "$kproxy" ] || die "no kproxy binary at $kproxy"
testenv=$(bash tests/apiserver/build.sh | tail -n1)
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
mkfifo "$work/ready"
TESTENV_DIR="$work/env" "$testenv" >"$work/ready" 2>"$work/testenv.err" &
pids+=($!)
read -r -t 180 line <"$work/ready" || die "the API server did not start: $(cat "$work/testenv.err")"
server=${line#ready }
k() { kubectl --kubeconfig "$work/env/admin.kubeconfig" "$@"; }

# The manifest's objects for real; no kubelet runs the Pod here, it is only the object the app reads.
k apply -f examples/ambassador/pod.yaml -o json >"$work/objects.json"
ns=$(jq -r '.items[] | select(.kind=="Pod") | .metadata.namespace' "$work/objects.json")
pod=$(jq -r '.items[] | select(.kind=="Pod") | .metadata.name' "$work/objects.json")
sa=$(jq -r '.items[] | select(.kind=="Pod") | .spec.serviceAccountName' "$work/objects.json")
mkdir "$work/sa"
k -n "$ns" create token "$sa" --duration=1h >"$work/sa/token"
cp "$work/env/ca.crt" "$work/sa/ca.crt"
echo -n "$ns" >"$work/sa/namespace"
mapfile -t args < <(jq -r '.items[] | select(.kind=="Pod") | .spec.initContainers[]
  | select(.name=="kproxy") | .args[]' "$work/objects.json" | sed "s/\$(POD_NAMESPACE)/$ns/g")
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
hostport=${server#https://}

mkfifo "$work/kproxy.out"
KUBERNETES_SERVICE_HOST=${hostport%:*} KUBERNETES_SERVICE_PORT=${hostport##*:} \
  KPROXY_INCLUSTER_DIR="$work/sa" HOME="$work" \
  "$kproxy" "${args[@]}" --port=0 --admin-address="127.0.0.1:$admin_port" \
  >"$work/kproxy.out" 2>"$work/access.log" &
kpid=$!
pids+=("$kpid")
read -r -t 30 line <"$work/kproxy.out" || die "kproxy did not start: $(cat "$work/access.log")"
api="http://127.0.0.1:${line##*:}"
admin="http://127.0.0.1:$admin_port"
curl -fsS --retry 10 --retry-connrefused --retry-delay 1 "$admin/readyz?exclude=upstream" >/dev/null

tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$kpid/stat"; }
mem() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$kpid/status"; }
echo "== $("$kproxy" --version), $(du -h "$kproxy" | cut -f1) binary; args: ${args[*]}"
echo "   after start: RSS $(mem VmRSS) KiB"

# 1. Idle, probed as the manifest says (startup probe done; readiness 10 s, liveness 20 s).
c0=$(cpu); t0=$(date +%s.%N)
for ((s = 0; s < idle; s += 10)); do
  curl -fsS -o /dev/null "$admin/readyz?exclude=upstream"
  [ $((s % 20)) -eq 0 ] && curl -fsS -o /dev/null "$admin/healthz"
  sleep 10
done
c1=$(cpu); t1=$(date +%s.%N)
echo "== idle ${idle}s (probes only): RSS $(mem VmRSS) KiB, peak $(mem VmHWM) KiB," \
  "CPU $(echo "scale=2; ($c1 - $c0) * 1000 / $tick / ($t1 - $t0)" | bc) millicores ($((c1 - c0)) ticks of 1/$tick s)"

# 2. The bounded load: one watch (the app's informer) plus REQUESTS GETs, CONCURRENCY at a time.
curl -sS -N --max-time 600 -o "$work/watch.out" \
  "$api/api/v1/namespaces/$ns/pods?watch=true&allowWatchBookmarks=true" &
wpid=$!
pids+=("$wpid")
for ((i = 0; i < requests; i++)); do
  echo "url = \"$api/api/v1/namespaces/$ns/pods/$pod\""
  echo "output = /dev/null"
done >"$work/urls"
c0=$(cpu); t0=$(date +%s.%N)
curl -sS --fail --parallel --parallel-max "$concurrency" -K "$work/urls" 2>"$work/curl.err" ||
  die "the load failed: $(head -c 500 "$work/curl.err")"
c1=$(cpu); t1=$(date +%s.%N)
kill "$wpid" 2>/dev/null || true
ok=$(grep -c '"status":200' "$work/access.log" || true)
echo "== load: $requests GETs, $concurrency at a time, one watch open: $ok answered 200," \
  "$(echo "scale=0; $requests / ($t1 - $t0)" | bc) requests/s," \
  "CPU $(echo "scale=0; ($c1 - $c0) * 1000 / $tick / ($t1 - $t0)" | bc) millicores while it ran," \
  "$(echo "scale=1; ($c1 - $c0) * 1000000 / $tick / $requests" | bc) µs of CPU per request"
echo "   RSS after $(mem VmRSS) KiB, peak $(mem VmHWM) KiB"
[ "$ok" -ge "$requests" ] || die "only $ok of $requests requests answered 200"
