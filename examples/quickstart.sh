#!/usr/bin/env bash
# No cluster needed: a genuine kube-apiserver v1.37 with etcd (tests/apiserver) on 127.0.0.1, a Job
# `my-job` and a Pod in it, and kproxy in front of it on 127.0.0.1:8001, in the foreground until Ctrl-C.
#
#   bash examples/quickstart.sh [kproxy flags, e.g. --port=8002 --access-log]
#
# Then, in a second terminal:
#   curl localhost:8001/api/v1/pods
#   curl localhost:8001/apis/batch/v1/namespaces/default/jobs/my-job
#   curl localhost:8001/
#
# Builds kproxy (cargo build --release) and the API server (tests/apiserver/build.sh, cached in
# ~/.cache/kproxy-testenv), or reuses both; a first build prints a progress line at least every 15 s.
# Ctrl-C (or SIGTERM, SIGHUP) stops kproxy, then the API server, removes the temporary directory that
# held the API server's data, certificates and kubeconfigs, and exits 0. Needs cargo, Go >= 1.26 (first
# build only) and curl.
# Env: KPROXY (a kproxy binary to run instead of building one), TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "quickstart: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

command -v curl >/dev/null || die "curl not found: install it (Debian: apt-get install curl)"
command -v setsid >/dev/null || die "setsid not found: install util-linux"

work= kpid= envpid= cargopid= log= timer= stopping=
# Stops one process: SIGTERM, then at most `secs` seconds for it to exit, then SIGKILL. Polled: inside
# the exit trap, bash's `wait -n` wakes only when its timer ends, not when the process exits.
stop() {
  local pid=$1 secs=$2 i
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$3 did not stop within ${secs}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local code=$? what="kproxy and the API server"
  # Every step runs, whatever one of them returns.
  set +e
  trap '' INT TERM HUP
  # A build in progress: cargo and its compilers are one process group.
  [ -n "$cargopid" ] && { kill -TERM -- "-$cargopid" 2>/dev/null || true; wait "$cargopid" 2>/dev/null || true; }
  [ -n "$timer" ] && kill "$timer" 2>/dev/null
  [ -n "$log" ] && rm -f "$log"
  # kproxy first (it drains its requests), then the API server behind it, then their files.
  stop "$kpid" 10 kproxy
  stop "$envpid" 10 "the API server"
  [ -n "$work" ] && rm -rf "$work"
  if [ -n "$stopping" ]; then
    [ -n "$work" ] || what="the build"
    say "stopped $what${work:+, removed $work}"
    code=0
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'stopping=1; exit 130' INT
trap 'stopping=1; exit 143' TERM
trap 'stopping=1; exit 129' HUP

# 1. kproxy. Cargo's output goes to a log; a line at least every 15 s says how far it got.
kproxy=${KPROXY:-}
if [ -z "$kproxy" ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
  say "building kproxy (cargo build --release; a first build takes 2 to 4 minutes, the last of them in link-time optimisation)"
  log=$(mktemp "${TMPDIR:-/tmp}/kproxy-quickstart-cargo.XXXXXX")
  start=$(date +%s)
  setsid cargo build --release --locked --bin kproxy --color never 2>"$log" &
  cargopid=$!
  status=
  while [ -z "$status" ]; do
    sleep 15 &
    timer=$!
    which=
    wait -n -p which "$cargopid" "$timer" && code=0 || code=$?
    if [ "$which" = "$cargopid" ]; then
      status=$code
      kill "$timer" 2>/dev/null || true
      wait "$timer" 2>/dev/null || true
      timer=
    else
      crates=$(grep -c '^ *Compiling ' "$log" || true)
      latest=$(grep '^ *Compiling ' "$log" | tail -n 1 | awk '{print $2}')
      say "building kproxy: $(elapsed "$start") elapsed, ${crates:-0} crates compiled${latest:+ (latest: $latest)}"
    fi
  done
  cargopid=
  if [ "$status" -ne 0 ]; then
    cat "$log" >&2
    die "cargo build --release failed (output above)"
  fi
  rm -f "$log"
  log=
  kproxy=${CARGO_TARGET_DIR:-target}/release/kproxy
fi
[ -x "$kproxy" ] || die "no kproxy binary at $kproxy"

# 2. The API server: built once into ~/.cache/kproxy-testenv (build.sh prints its own progress).
testenv=$(bash tests/apiserver/build.sh | tail -n 1)
[ -x "$testenv" ] || die "tests/apiserver/build.sh produced no binary"

# 3. Its files in a temporary directory, removed on exit. Each child runs in a session of its own, so
#    Ctrl-C reaches only this script, which stops them in order. The API server also stops when this
#    script's end of its stdin closes, should the script itself be killed (TESTENV_STDIN_EOF_EXIT).
work=$(mktemp -d "${TMPDIR:-/tmp}/kproxy-quickstart.XXXXXX")
mkfifo "$work/alive" "$work/env.out" "$work/kproxy.out"
exec 8<>"$work/alive"
say "starting kube-apiserver and etcd in $work (about 5 s)"
TESTENV_DIR="$work/env" TESTENV_STDIN_EOF_EXIT=1 setsid "$testenv" \
  <"$work/alive" >"$work/env.out" 2>"$work/env.err" 8>&- &
envpid=$!
exec 3<"$work/env.out"
start=$(date +%s)
line=
until read -r -t 15 -u 3 line; do
  # A timeout (status above 128) is worth another wait, up to 180 s; end of file means it exited.
  [ $? -gt 128 ] && [ $(( $(date +%s) - start )) -lt 180 ] ||
    { cat "$work/env.err" >&2; die "the API server did not start (its errors are above)"; }
  say "waiting for the API server: $(elapsed "$start") elapsed"
done
server=${line#ready }
env=$work/env
kver=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' tests/apiserver/go.mod)

# 4. What the curl commands below show: a Job, and the Pod its controller would have made (this API
#    server runs without kube-controller-manager, so the Pod is created here, owned by the Job).
api() {
  curl -sS --fail-with-body --max-time 30 --cacert "$env/ca.crt" --cert "$env/admin.crt" \
    --key "$env/admin.key" -H 'Content-Type: application/json' "$@"
}
container='{"name":"hello","image":"busybox:1.36","command":["echo","hello from my-job"]}'
job=$(api -X POST "$server/apis/batch/v1/namespaces/default/jobs" -d '{"apiVersion":"batch/v1",
  "kind":"Job","metadata":{"name":"my-job"},"spec":{"template":{"spec":{"restartPolicy":"Never",
  "containers":['"$container"']}}}}') || die "creating Job my-job failed: $job"
# The first "uid" of the answer is the Job's own (metadata comes first); the answer may be indented.
field() { printf '%s' "$1" | grep -o "\"$2\": *\"$3[^\"]*\"" | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/'; }
uid=$(field "$job" uid '') && [ -n "$uid" ] || die "no uid in the Job the API server returned: $job"
pod=$(api -X POST "$server/api/v1/namespaces/default/pods" -d '{"apiVersion":"v1","kind":"Pod",
  "metadata":{"generateName":"my-job-","labels":{"batch.kubernetes.io/job-name":"my-job",
  "job-name":"my-job","batch.kubernetes.io/controller-uid":"'"$uid"'","controller-uid":"'"$uid"'"},
  "ownerReferences":[{"apiVersion":"batch/v1","kind":"Job","name":"my-job","uid":"'"$uid"'",
  "controller":true,"blockOwnerDeletion":true}]},
  "spec":{"restartPolicy":"Never","containers":['"$container"']}}') || die "creating the Pod failed: $pod"
podname=$(field "$pod" name my-job-) && [ -n "$podname" ] || die "no name in the Pod the API server returned: $pod"
say "created Job default/my-job and Pod default/$podname"

# 5. kproxy with the admin kubeconfig; flags given to this script come last, so they win.
setsid "$kproxy" --kubeconfig "$env/admin.kubeconfig" "$@" </dev/null >"$work/kproxy.out" 3<&- 8>&- &
kpid=$!
exec 4<"$work/kproxy.out"
read -r -t 30 -u 4 line ||
  die "kproxy did not start (its error is above); if port 8001 is taken: bash examples/quickstart.sh --port=8002"
echo "$line"
addr=${line#Starting to serve on }
case $addr in
  127.0.0.1:*|\[::1\]:*) base="localhost:${addr##*:}" ;;
  *) base=$addr ;;
esac
cat <<EOF

kproxy serves on $addr in front of a real kube-apiserver $kver at $server
(user admin, $env/admin.kubeconfig). In a second terminal:
  curl $base/api/v1/pods
  curl $base/apis/batch/v1/namespaces/default/jobs/my-job
  curl $base/
Ctrl-C stops kproxy and the API server and removes $work.
EOF

# 6. Until Ctrl-C, or until one of them exits by itself.
which=
wait -n -p which "$kpid" "$envpid" || true
if [ "$which" = "$kpid" ]; then
  kpid=
  die "kproxy exited on its own"
fi
envpid=
cat "$work/env.err" >&2
die "the API server exited on its own (its errors are above)"
