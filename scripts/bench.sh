#!/usr/bin/env bash
# Every SPEC §9 target in one run (benches/suite.rs), with the seed's design
# as the baseline; prints one table and rewrites the figures section of
# BENCHMARKS.md.
#
#   scripts/bench.sh            release build, 3 runs of each full-size scenario
#   scripts/bench.sh --quick    a tenth of each size, 1 run, BENCHMARKS.md left
#                               alone: the smoke test CI runs. It uses the test
#                               build (scripts/test.sh built it already), so
#                               its figures say nothing; it only has to complete.
#
# Other arguments go to the suite: --runs N, --only events,burst,... (with
# --only, BENCHMARKS.md is left alone: it holds one run of every scenario).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$PWD/.venv"
if [[ -x "$VENV/bin/python" ]]; then
    export KUBEHERALD_MOTO_PYTHON="$VENV/bin/python"
fi

quick=false
for arg in "$@"; do
    [[ "$arg" == "--quick" ]] && quick=true
done

if $quick; then
    exec cargo bench --locked --profile dev -p kubeherald --bench suite -- "$@"
fi
echo "==> building release"
cargo bench --locked -p kubeherald --bench suite --no-run
exec cargo bench --locked -p kubeherald --bench suite -- --write BENCHMARKS.md "$@"
