#!/usr/bin/env bash
# Build k8s-testenv (kube-apiserver + embedded etcd) once and cache it outside the repo:
#   ${KPROXY_TESTENV_CACHE:-$HOME/.cache/kproxy-testenv}/<sha256 of go.mod+go.sum+main.go>/k8s-testenv
# Reuses the cached binary when present. Prints the binary path as the last stdout
# line; all build output goes to stderr. Exits non-zero on any failure.
# Env: GO (go command, default: `go` on PATH, else /usr/local/go/bin/go), KPROXY_TESTENV_CACHE,
# KPROXY_TESTENV_PROGRESS (seconds between progress lines, default 15; tests/testenv_build.rs uses 1).
set -euo pipefail

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
# Measured cold builds (README.md, "Measurements"): 5 min on 2 idle cores, 9.5 and 21 min while Rust
# builds shared them.
every=${KPROXY_TESTENV_PROGRESS:-15}
first_build="a first build takes 5 to 20 minutes (5 on 2 idle cores); later runs reuse it"

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

# Serialise concurrent builds (e.g. several test binaries starting at once). While another build holds
# the lock, say so every $every seconds instead of waiting in silence.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$out/.lock"
  if ! flock -n 9; then
    waited=$(date +%s)
    until flock -w "$every" 9; do
      echo "build.sh: waiting for another build of k8s-testenv into $out to finish ($(elapsed "$waited") so far; $first_build)" >&2
    done
  fi
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

echo "build.sh: building k8s-testenv: kube-apiserver $kver with embedded etcd ($("$go" version)) into $out" >&2
echo "build.sh: $first_build; progress every ${every} s" >&2
tmp="$out/k8s-testenv.tmp.$$"
log="$out/build.log.$$"
start=$(date +%s)
# `go build -v` names each package as it compiles it (cached ones are not named): the progress lines
# count them against the packages of the build (`go list -deps`). go runs in a session of its own, so
# the whole build (go and its compilers) can be stopped as one group when this script is interrupted.
CGO_ENABLED=0 setsid "$go" build -v -mod=readonly -buildvcs=false -trimpath -ldflags "$ldflags" -o "$tmp" . 2>"$log" &
gopid=$!
pkgs="$out/packages.$$"
"$go" list -mod=readonly -deps . >"$pkgs" 2>/dev/null &
listpid=$!
timer=
trap 'kill -TERM -- "-$gopid" 2>/dev/null || true; kill "$listpid" $timer 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$tmp" "$log" "$pkgs"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
status=
while [ -z "$status" ]; do
  # Wakes when go exits or when the timer does, whichever is first.
  sleep "$every" &
  timer=$!
  finished=
  wait -n -p finished "$gopid" "$timer" && code=0 || code=$?
  if [ "$finished" = "$gopid" ]; then
    status=$code
    kill "$timer" 2>/dev/null || true
    wait "$timer" 2>/dev/null || true
  else
    total=
    if ! kill -0 "$listpid" 2>/dev/null; then total=$(wc -l <"$pkgs"); [ "$total" -gt 0 ] || total=; fi
    compiled=$(grep -cvE '[ :#]' "$log" 2>/dev/null || true)
    # `|| true`: before go names its first package (it may download modules for minutes) grep finds
    # nothing, and under pipefail that would end the script silently.
    last=$(grep -vE '[ :#]' "$log" 2>/dev/null | tail -n 1 || true)
    echo "build.sh: building k8s-testenv: $(elapsed "$start") elapsed, ${compiled:-0}${total:+ of $total} packages compiled${last:+ (latest: $last)}" >&2
  fi
done
trap - EXIT INT TERM
if [ "$status" -ne 0 ]; then
  grep -E '[ :#]' "$log" | tail -n 60 >&2 || true
  rm -f "$tmp" "$log" "$pkgs"
  die "go build FAILED (exit $status) in $here (see the output above)"
fi
rm -f "$log" "$pkgs"
mv -f "$tmp" "$bin"
echo "build.sh: built $bin in $(elapsed "$start")" >&2
echo "$bin"
