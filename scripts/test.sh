#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the moto server (the
# AWS peer of the tests) into .venv, then checks formatting and lints, builds
# and runs every test of the workspace. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# moto 5.2 serves SNS, SQS and CloudWatch Logs; pinned so a new release cannot
# change what the tests see between two runs.
MOTO_REQUIREMENT='moto[server]==5.2.5'
# The manifests are validated against the Kubernetes schemas, not only parsed.
VALIDATE_REQUIREMENT='kubernetes-validate==1.37.0'
# template.yaml and template-tenant.yaml are linted against CloudFormation's specs.
CFN_LINT_REQUIREMENT='cfn-lint==1.38.0'
VENV="$PWD/.venv"

if ! "$VENV/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
    echo "==> installing $MOTO_REQUIREMENT into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$MOTO_REQUIREMENT"
fi
if ! "$VENV/bin/python" -c 'import kubernetes_validate' >/dev/null 2>&1; then
    echo "==> installing $VALIDATE_REQUIREMENT into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$VALIDATE_REQUIREMENT"
fi
if ! "$VENV/bin/cfn-lint" --version 2>/dev/null | grep -qx "cfn-lint ${CFN_LINT_REQUIREMENT#cfn-lint==}"; then
    echo "==> installing $CFN_LINT_REQUIREMENT into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$CFN_LINT_REQUIREMENT"
fi
# The test bed starts moto with this interpreter; without it, tests fail
# loudly instead of skipping.
export KUBEHERALD_MOTO_PYTHON="$VENV/bin/python"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
# The benchmark suite at a tenth of each size, on the test build: it must
# run every SPEC §9 scenario to the end (its figures say nothing here).
echo "==> scripts/bench.sh --quick"
scripts/bench.sh --quick
