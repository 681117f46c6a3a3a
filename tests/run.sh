#!/usr/bin/env bash
# The whole test suite: formatting, lints, the hermetic cargo tests, then the end-to-end suite.
# Installs what it needs; fails loudly when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
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
