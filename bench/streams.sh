#!/usr/bin/env bash
# The streams bench: port-forward throughput and exec round-trip latency through a genuine
# kube-apiserver to kwok's kubelet endpoint, direct vs `kubectl proxy` vs kproxy (bench/streams.py).
# Builds or reuses the API server and kwok (tests/apiserver/build.sh, tests/kwok/build.sh: Go needed)
# and the release binary (skip with KPROXY_BENCH_NO_BUILD=1). Arguments go to streams.py, e.g.
# `bench/streams.sh --rounds 5`. Output: a table on stdout and bench/results/streams.json.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
for tool in curl openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "streams: $tool is not installed (bench/run.sh installs it)" >&2; exit 1; }
done
command -v kubectl >/dev/null 2>&1 || { echo "streams: kubectl (the reference) is not on PATH" >&2; exit 1; }
apiserver=$(bash tests/apiserver/build.sh | tail -n 1)
kwok=$(bash tests/kwok/build.sh | tail -n 1)
if [ -z "${KPROXY_BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked >&2
fi
exec timeout --signal=TERM --kill-after=30 900 python3 "$here/streams.py" \
  --apiserver "$apiserver" --kwok "$kwok" "$@"
