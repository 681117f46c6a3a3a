#!/usr/bin/env bash
# Quick start: build (or reuse) k8s-testenv, run a real kube-apiserver + etcd on 127.0.0.1
# in the foreground, and print the kubeconfigs to point kproxy at. Ctrl-C stops it.
#
#   tests/apiserver/run.sh [DIR] [extra kube-apiserver flags, e.g. -v=2]
#
# DIR defaults to a new temporary directory, removed again on exit. TESTENV_PORT picks the
# port (default: a free one). The first build takes several minutes (see README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$("$here/build.sh" | tail -n 1)
[ -x "$bin" ] || { echo "run.sh: build.sh did not produce a binary" >&2; exit 1; }

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  dir=$1; shift
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
else
  dir=$(mktemp -d "${TMPDIR:-/tmp}/k8s-testenv.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
fi

echo "run.sh: starting $bin (TESTENV_DIR=$dir)" >&2
TESTENV_DIR=$dir "$bin" "$@" | while IFS= read -r line; do
  echo "$line"
  case $line in
    "ready "*)
      cat <<EOF

k8s-testenv is ready at ${line#ready } (Ctrl-C to stop). Point kproxy at one of:
  kproxy --kubeconfig $dir/admin.kubeconfig   # user admin, client cert, group system:masters
  kproxy --kubeconfig $dir/alice.kubeconfig   # user alice, client cert, group dev (configmaps in team-a only)
  kproxy --kubeconfig $dir/token.kubeconfig   # bearer token admin-token (admin, system:masters)
  kproxy --kubeconfig $dir/bob.kubeconfig     # bearer token bob-token: authenticated, forbidden everywhere
Direct access:
  kubectl --kubeconfig $dir/admin.kubeconfig get namespaces
  curl --cacert $dir/ca.crt --cert $dir/admin.crt --key $dir/admin.key ${line#ready }/api/v1/namespaces
Full server log: $dir/testenv.log
EOF
      ;;
  esac
done
