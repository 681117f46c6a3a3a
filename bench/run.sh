#!/usr/bin/env bash
# One command for the kproxy benchmark: installs nginx, wrk and curl from Debian when missing, builds
# the release binary, then runs bench.py (direct vs `kubectl proxy` vs nginx as a proxy vs kproxy, alternated
# over rounds).
# Arguments are passed to `bench.py run` (see `bench/bench.py run --help`), e.g. `bench/run.sh --rounds 5`.
# Output: a table on stdout and bench/results/latest.json.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}" >&2
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v kubectl >/dev/null 2>&1 || { echo "bench: kubectl (the reference) is not on PATH" >&2; exit 1; }

if [ -z "${KPROXY_BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked >&2
fi

# 1,000 watches hold 2,000+ descriptors in each proxy and in the watch helpers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export PATH="$PATH:/usr/sbin"
exec timeout --signal=TERM --kill-after=30 900 python3 "$here/bench.py" run "$@"
