#!/usr/bin/env bash
# The whole test suite: formatting, lints, the hermetic cargo tests, then the end-to-end suite.
# Installs what it needs; fails loudly when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Debian tools the tests call: ss (a listener's backlog, tests/cli.rs), jq and curl (examples/validate.sh,
# tests/e2e.sh). kubectl, the reference, must already be on PATH (tests/kubectl.rs says so if not).
need=()
command -v ss >/dev/null || need+=(iproute2)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "run.sh: installing ${need[*]}" >&2
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The 1,000-watch test (tests/watches.rs) holds about 2,000 sockets; raise the soft open-file limit as
# far as the hard limit allows (the test itself fails with a clear message when it is still too low).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
# The sidecar image's binary: statically linked (musl if installed, else glibc crt-static), checked
# static with file/ldd and run (--version) by the script. The image itself only where buildah exists.
bash build/static.sh
if command -v buildah >/dev/null; then
  bash build/image.sh
else
  echo "run.sh: buildah not installed; skipping the image build (apt-get install -y buildah)" >&2
fi
# The examples against a real kube-apiserver, driven by the static binary: server-side dry-run of the
# ambassador manifest, then its sidecar args in-cluster style through examples/curl.sh.
bash examples/validate.sh build/out/kproxy
# The end-to-end suite against a genuine kube-apiserver (builds or reuses it; see docs/e2e.md).
bash tests/e2e.sh
