#!/usr/bin/env bash
# Regenerates link/symbol-order.txt, the order in which the release link places functions (see build.rs),
# from a callgrind run of the current code: startup first, then GETs, a LIST, a download and a watch
# against the benchmark's nginx upstream. Run it after dependency or toolchain updates (symbol names carry
# hashes of both), then `cargo build --release`. Needs valgrind, nginx, curl, wrk and openssl.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
export PATH="$PATH:/usr/sbin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The same build as `cargo build --release` (same symbol names), keeping the symbol table.
cargo rustc --release --locked --bin kproxy -- -C strip=none >&2
cp target/release/kproxy "$tmp/kproxy-symbols"
# The image's static build (build/static.sh, same flags) names its functions with other hashes: its names
# go into the same file, beside their counterparts.
target="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=none \
  cargo build --release --locked --target "$target" --bin kproxy >&2
python3 "$here/bench.py" link-order --kproxy "$tmp/kproxy-symbols" \
  --also "target/$target/release/kproxy" --out link/symbol-order.txt
cargo build --release --locked >&2
