#!/usr/bin/env bash
# Build kwok (sigs.k8s.io/kwok, the node simulator) once and cache it outside the repo:
#   ${KPROXY_KWOK_CACHE:-$HOME/.cache/kproxy-kwok}/<sha256 of go.mod+go.sum+build.sh>/{kwok,stages.yaml}
# kwok plays the kubelet for the end-to-end suite: it makes pods on its node Running and answers
# exec, attach, logs and port-forward on its kubelet endpoint (see tests/apiserver/README.md).
# `stages.yaml` holds kwok's own default stages (node-initialize, pod-ready, pod-delete), copied from
# the module at the version go.mod pins: kwok itself loads no stages unless given them.
# Reuses the cached build when present. Prints the binary path as the last stdout line; all build
# output goes to stderr. Exits non-zero on any failure.
# Env: GO (go command, default: `go` on PATH, else /usr/local/go/bin/go), KPROXY_KWOK_CACHE.
set -euo pipefail

die() { echo "kwok/build.sh: ERROR: $*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

go=${GO:-}
if [ -z "$go" ]; then
  if command -v go >/dev/null 2>&1; then go=go
  elif [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go
  else die "no Go toolchain found (need Go >= 1.26; set GO=/path/to/go)"; fi
fi

hash=$(cat go.mod go.sum build.sh | sha256sum | cut -d' ' -f1)
cache=${KPROXY_KWOK_CACHE:-$HOME/.cache/kproxy-kwok}
out="$cache/$hash"
bin="$out/kwok"

if [ -x "$bin" ] && [ -s "$out/stages.yaml" ]; then
  echo "kwok/build.sh: reusing $bin" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$out" || die "cannot create $out"

# Serialise concurrent builds.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$out/.lock"
  flock 9
  if [ -x "$bin" ] && [ -s "$out/stages.yaml" ]; then
    echo "kwok/build.sh: reusing $bin (built concurrently)" >&2
    echo "$bin"
    exit 0
  fi
fi

kver=$(awk '$1 == "sigs.k8s.io/kwok" && $2 ~ /^v[0-9]/ { print $2; exit }' go.mod)
[ -n "$kver" ] || die "cannot find the sigs.k8s.io/kwok version in go.mod"

echo "kwok/build.sh: building kwok $kver ($("$go" version)) into $out" >&2
echo "kwok/build.sh: a cold build takes about 2.7 min of CPU (1.5-2 min on 2 idle cores), longer on a busy machine" >&2
start=$(date +%s)
tmp="$out/kwok.tmp.$$"
if ! CGO_ENABLED=0 "$go" build -mod=readonly -buildvcs=false -trimpath -ldflags "-s -w" \
    -o "$tmp" sigs.k8s.io/kwok/cmd/kwok >&2; then
  rm -f "$tmp"
  die "go build FAILED in $here (see the output above)"
fi

# The default stages of `kwokctl` (pkg/kwokctl/runtime/cluster.go), from the module source.
moddir=$(GOFLAGS=-mod=readonly "$go" list -m -f '{{.Dir}}' sigs.k8s.io/kwok) ||
  die "cannot locate the sigs.k8s.io/kwok module source"
stages="$out/stages.yaml.tmp.$$"
: >"$stages"
for f in node/fast/node-initialize.yaml pod/fast/pod-ready.yaml pod/fast/pod-delete.yaml; do
  [ -s "$moddir/kustomize/stage/$f" ] || { rm -f "$tmp" "$stages"; die "missing stage $f in $moddir"; }
  { echo "---"; cat "$moddir/kustomize/stage/$f"; } >>"$stages"
done
mv -f "$stages" "$out/stages.yaml"
mv -f "$tmp" "$bin"
echo "kwok/build.sh: built $bin in $(( $(date +%s) - start ))s" >&2
echo "$bin"
