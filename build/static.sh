#!/usr/bin/env bash
# Builds a statically linked kproxy for the container image (Containerfile) and checks it:
#   build/out/kproxy          the binary (release profile, stripped)
#   build/out/ca-certificates.crt   the build host's CA bundle, for API servers with public certificates
# musl when its Rust target is installed (rustup target add x86_64-unknown-linux-musl); otherwise glibc
# with `crt-static` (rustup cannot download targets everywhere; glibc's static libc.a comes with
# libc6-dev). Prints the binary's path as the last line. Env: TARGET to force a target triple.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(uname -m)
musl="$arch-unknown-linux-musl"
gnu="$arch-unknown-linux-gnu"
if [ -n "${TARGET:-}" ]; then
  target=$TARGET
elif rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  target=$musl
else
  target=$gnu
fi

# `--target` keeps the flag off build scripts and proc-macros, which must stay dynamic. Built with its
# symbol table (stripped below, into build/out) so the link order's freshness can be counted.
echo "static.sh: building kproxy for $target (crt-static)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=none \
  cargo build --release --locked --target "$target" --bin kproxy >&2

bin="target/$target/release/kproxy"
out=build/out
mkdir -p "$out"
strip -o "$out/kproxy" "$bin"

# How many functions of link/symbol-order.txt this build still has (their names carry hashes of the code,
# the toolchain and the lockfile, so the list goes stale as they change; build.rs passes it to lld only for
# the glibc target). A number to watch, not a failure: bench/link-order.sh regenerates the list before a
# release (README, "Link order").
if [ -f link/symbol-order.txt ]; then
  total=$(grep -c . link/symbol-order.txt || true)
  found=$(nm --defined-only "$bin" | awk '{print $3}' | sort -u |
    comm -12 - <(grep . link/symbol-order.txt | sort -u) | wc -l)
  echo "static.sh: link order: $found of $total symbols in link/symbol-order.txt resolve in this build" >&2
fi

# A static binary: `file` says "statically linked" (or "static-pie linked"), ldd finds no libraries.
desc=$(file -b "$out/kproxy")
case "$desc" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) echo "static.sh: ERROR: $out/kproxy is not static: $desc" >&2; exit 1 ;;
esac
# glibc's ldd says "not a dynamic executable" (static) or "statically linked" (static-pie).
libs=$(ldd "$out/kproxy" 2>&1 || true)
case "$libs" in
  *"not a dynamic executable"*|*"statically linked"*) ;;
  *) echo "static.sh: ERROR: ldd lists shared libraries for $out/kproxy:" >&2; echo "$libs" >&2; exit 1 ;;
esac
"$out/kproxy" --version >&2

for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -f "$bundle" ]; then cp "$bundle" "$out/ca-certificates.crt"; break; fi
done
[ -f "$out/ca-certificates.crt" ] || { echo "static.sh: ERROR: no CA bundle found on this host" >&2; exit 1; }

echo "static.sh: $desc" >&2
echo "static.sh: $(du -h "$out/kproxy" | cut -f1) $out/kproxy" >&2
echo "$out/kproxy"
