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
