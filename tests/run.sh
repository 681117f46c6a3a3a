#!/usr/bin/env bash
# The whole test suite: formatting, lints, the hermetic cargo tests, then the end-to-end suite.
# Installs what it needs; fails loudly when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Debian tools the tests call: ss (a listener's backlog, tests/cli.rs), jq and curl (examples/validate.sh,
# tests/e2e.sh), buildah (the container image, build/image.sh; it pulls in containers-common, whose
# /etc/containers/policy.json `buildah push` needs), file (build/static.sh checks the binary is static).
# kubectl, the reference, must already be on PATH (tests/kubectl.rs says so if not).
need=()
command -v ss >/dev/null || need+=(iproute2)
command -v jq >/dev/null || need+=(jq)
command -v curl >/dev/null || need+=(curl)
command -v buildah >/dev/null || need+=(buildah)
command -v file >/dev/null || need+=(file)
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
# The sidecar image, on every machine: build/static.sh builds the statically linked binary (musl if
# installed, else glibc crt-static; checked static with file/ldd and run), then buildah builds the image
# as root without a container engine: the vfs storage driver (no overlayfs mount, which a nested sandbox
# may refuse) and chroot isolation (no user namespace, no runc). build/check_image.py then checks the
# OCI archive: digests, user, entrypoint, the binary byte for byte, and that it runs.
STORAGE_DRIVER=vfs ISOLATION=chroot bash build/image.sh
# The examples against a real kube-apiserver, driven by the static binary: server-side dry-run of the
# ambassador manifest, then its sidecar args in-cluster style through examples/curl.sh.
bash examples/validate.sh build/out/kproxy
# The end-to-end suite against a genuine kube-apiserver (builds or reuses it; see docs/e2e.md).
bash tests/e2e.sh
