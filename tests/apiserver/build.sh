#!/usr/bin/env bash
# Build k8s-testenv (kube-apiserver + embedded etcd) once and cache it outside the repo:
#   ${KPROXY_TESTENV_CACHE:-$HOME/.cache/kproxy-testenv}/<sha256 of go.mod+go.sum+main.go>/k8s-testenv
# Reuses the cached binary when present. Prints the binary path as the last stdout
# line; all build output goes to stderr. Exits non-zero on any failure.
# Env: GO (go command, default: `go` on PATH, else /usr/local/go/bin/go), KPROXY_TESTENV_CACHE.
set -euo pipefail

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

go=${GO:-}
if [ -z "$go" ]; then
  if command -v go >/dev/null 2>&1; then go=go
  elif [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go
  else die "no Go toolchain found (need Go >= 1.26; set GO=/path/to/go)"; fi
fi

hash=$(cat go.mod go.sum main.go | sha256sum | cut -d' ' -f1)
cache=${KPROXY_TESTENV_CACHE:-$HOME/.cache/kproxy-testenv}
out="$cache/$hash"
bin="$out/k8s-testenv"

if [ -x "$bin" ]; then
  echo "build.sh: reusing $bin" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$out" || die "cannot create $out"

# Serialise concurrent builds (e.g. several test binaries starting at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$out/.lock"
  flock 9
  if [ -x "$bin" ]; then
    echo "build.sh: reusing $bin (built concurrently)" >&2
    echo "$bin"
    exit 0
  fi
fi

# Version stamped into /version, as hack/lib/version.sh does (else v0.0.0-master+$Format:%H$).
kver=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { print $2; exit }' go.mod)
[ -n "$kver" ] || die "cannot find the k8s.io/kubernetes version in go.mod"
kmajor=${kver#v}; kmajor=${kmajor%%.*}
kminor=${kver#v*.}; kminor=${kminor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/component-base/version.gitMajor=$kmajor -X k8s.io/component-base/version.gitMinor=$kminor"

echo "build.sh: building k8s-testenv ($kver, $("$go" version)) into $out" >&2
echo "build.sh: a cold build takes about 5 min on 2 idle cores (about 10 min of CPU), longer on a busy machine" >&2
tmp="$out/k8s-testenv.tmp.$$"
start=$(date +%s)
if ! CGO_ENABLED=0 "$go" build -mod=readonly -buildvcs=false -trimpath -ldflags "$ldflags" -o "$tmp" . >&2; then
  rm -f "$tmp"
  die "go build FAILED in $here (see the output above)"
fi
mv -f "$tmp" "$bin"
echo "build.sh: built $bin in $(( $(date +%s) - start ))s" >&2
echo "$bin"
