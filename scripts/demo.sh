#!/usr/bin/env bash
# kubeherald live, in one command: simulated Kubernetes clusters on loopback
# (the test bed's API server: ConfigMaps and a Deployment that change, pods
# whose containers log, a container restart, a pod replaced), and kubeherald
# watching every one of them. Events and log lines are shown as they happen;
# at the end (after --seconds, or Ctrl-C) a summary, and everything started
# here is stopped.
#
#   scripts/demo.sh                 events and log lines to stdout (needs only Rust)
#   scripts/demo.sh --aws           SNS, SQS and CloudWatch Logs on moto (needs python3)
#   options: --seconds N (default 60), --clusters N (default 2)
#
# KUBEHERALD_BIN / KUBEHERALD_SIM_BIN: use these binaries instead of building
# (the test suite does); KUBEHERALD_DEMO_PROFILE=dev builds without --release.
set -euo pipefail
cd "$(dirname "$0")/.."

run_seconds=60
clusters=2
aws=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) run_seconds="$2"; shift 2 ;;
        --clusters) clusters="$2"; shift 2 ;;
        --aws) aws=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "${KUBEHERALD_BIN:-}" ] || [ -z "${KUBEHERALD_SIM_BIN:-}" ]; then
    profile="${KUBEHERALD_DEMO_PROFILE:-release}"
    flag=--release
    out=target/release
    if [ "$profile" = dev ]; then flag=; out=target/debug; fi
    echo "==> building kubeherald and the cluster simulator (cargo build $flag; the first build takes a few minutes)" >&2
    cargo build --locked $flag -p kubeherald --bin kubeherald -p kubeherald-testbed --bin kubeherald-sim >&2
    KUBEHERALD_BIN="$PWD/$out/kubeherald"
    KUBEHERALD_SIM_BIN="$PWD/$out/kubeherald-sim"
fi

if [ "$aws" = 1 ]; then
    # moto serves SNS, SQS and CloudWatch Logs; the same pinned version as
    # the test suite, in the same .venv.
    MOTO_REQUIREMENT='moto[server]==5.2.5'
    if ! .venv/bin/python -c 'import moto.server' >/dev/null 2>&1; then
        echo "==> installing $MOTO_REQUIREMENT into .venv" >&2
        python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check "$MOTO_REQUIREMENT" >&2
    fi
    export KUBEHERALD_MOTO_PYTHON="$PWD/.venv/bin/python"
fi

work="$(mktemp -d)"
sim_pid=
kubeherald_pid=
show_pid=
cleanup() {
    for pid in $kubeherald_pid $sim_pid $show_pid; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
stop=0
trap 'stop=1' INT TERM

# The children ignore Ctrl-C: this script stops them in order, so that
# kubeherald drains and the summaries are printed.
aws_args=()
if [ "$aws" = 1 ]; then aws_args=(--aws "$work/aws.env"); fi
( trap '' INT; exec "$KUBEHERALD_SIM_BIN" serve --kubeconfig "$work/kubeconfig" \
    --clusters "$clusters" "${aws_args[@]}" >"$work/sim.out" 2>"$work/sim.log" ) &
sim_pid=$!
for _ in $(seq 1 600); do
    if [ -s "$work/kubeconfig" ] && { [ "$aws" = 0 ] || [ -s "$work/aws.env" ]; }; then break; fi
    if ! kill -0 "$sim_pid" 2>/dev/null; then
        echo "demo.sh: the simulator stopped:" >&2; cat "$work/sim.log" >&2; exit 1
    fi
    sleep 0.1
done
[ -s "$work/kubeconfig" ] || { echo "demo.sh: the simulator did not start" >&2; exit 1; }

sink=stdout
if [ "$aws" = 1 ]; then
    # shellcheck disable=SC1091
    . "$work/aws.env"
    sink=cloudwatch
fi
cat >"$work/config.yaml" <<EOF
kubeconfig: $work/kubeconfig
resources:
  - {apiVersion: v1, kind: ConfigMap}
  - {apiVersion: apps/v1, kind: Deployment}
logs:
  prefix: demo
  retention_days: 7
  sink: $sink
spool:
  dir: $work/spool
EOF

# /metrics, /healthz and /readyz on a free port (say HTTP_LISTEN to choose).
export HTTP_LISTEN="${HTTP_LISTEN:-127.0.0.1:0}"
mkfifo "$work/stdout"
( trap '' INT; exec "$KUBEHERALD_SIM_BIN" show <"$work/stdout" ) &
show_pid=$!
echo "==> kubeherald is watching $clusters simulated clusters for ${run_seconds}s (Ctrl-C stops earlier)" >&2
# With --aws events and log lines go to AWS, not stdout: kubeherald's own
# log is shown instead, and what AWS received is summed up at the end.
log="$work/kubeherald.log"
if [ "$aws" = 1 ]; then log=/dev/stderr; fi
( trap '' INT; exec "$KUBEHERALD_BIN" run --config "$work/config.yaml" --log-format text \
    >"$work/stdout" 2>"$log" ) &
kubeherald_pid=$!

for _ in $(seq 1 "$run_seconds"); do
    [ "$stop" = 1 ] && break
    kill -0 "$kubeherald_pid" 2>/dev/null || break
    sleep 1 || true
done

status=0
kill -TERM "$kubeherald_pid" 2>/dev/null || true
wait "$kubeherald_pid" || status=$?
kubeherald_pid=
wait "$show_pid" || true
show_pid=
kill -TERM "$sim_pid" 2>/dev/null || true
wait "$sim_pid" || true
sim_pid=
cat "$work/sim.out"
if [ "$status" != 0 ]; then
    echo "demo.sh: kubeherald exited with status $status" >&2
    if [ "$aws" = 0 ]; then tail -n 40 "$work/kubeherald.log" >&2; fi
    exit 1
fi
