#!/usr/bin/env bash
# Builds the container image (Containerfile) from the static binary, without a Docker engine:
# buildah with chroot isolation and the vfs storage driver works as plain root in a sandbox without
# user namespaces or overlayfs. Also writes build/out/kproxy-image.tar (OCI archive) for
# `podman load`, `kind load image-archive` or `ctr -n k8s.io images import`.
# Usage: build/image.sh [TAG]   (default localhost/kproxy:<Cargo version>)
# Env: STORAGE_DRIVER (default vfs), ISOLATION (default chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v buildah >/dev/null || { echo "image.sh: buildah not found: apt-get install -y buildah" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag=${1:-localhost/kproxy:$version}
bash build/static.sh >/dev/null

b() { buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }
# vfs keeps a full copy of every image: the one this tag named before is removed once it is replaced,
# so repeated runs (every `tests/run.sh`) do not pile up untagged copies.
previous=$(b images --quiet --no-trunc "$tag" 2>/dev/null || true)
start=$(date +%s)
b bud --isolation "${ISOLATION:-chroot}" -f Containerfile -t "$tag" . >&2
current=$(b images --quiet --no-trunc "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  b rmi "$previous" >/dev/null 2>&1 || true
fi
rm -f build/out/kproxy-image.tar
b push "$tag" "oci-archive:build/out/kproxy-image.tar:$tag" >&2

# The image runs: its entrypoint binary, taken out of the OCI archive's layers, prints the version, and
# the config says who it runs as. Checked on the host rather than with `buildah run`, which needs a
# container runtime this sandbox may not allow (CI saw "sealing memfd copy: Device or resource busy").
python3 build/check_image.py build/out/kproxy-image.tar >&2
echo "image.sh: $tag built in $(( $(date +%s) - start ))s, $(b images --format '{{.Size}}' "$tag") unpacked, $(du -h build/out/kproxy-image.tar | cut -f1) as OCI archive (build/out/kproxy-image.tar)" >&2
echo "$tag"
