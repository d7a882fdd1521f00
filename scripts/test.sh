#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need, then runs
# ruff, mypy and the fast test suite; the integration suite runs when its venv can be built
# (see scripts/integration-env.sh; skip it with COORDATT_DIAG_SKIP_INTEGRATION=1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch first, from the local CPU wheel: nothing else may pull a CUDA build
$PY -m pip install -q --disable-pip-version-check torch==2.13.0
$PY -m pip install -q --disable-pip-version-check -e '.[dev,safetensors]'
$PY -m ruff check coordatt_diag tests scripts benchmarks
$PY -m mypy
$PY -m pytest -q -m "not integration" "$@"
if [ "${COORDATT_DIAG_SKIP_INTEGRATION:-0}" != "1" ] && [ -x scripts/integration-env.sh ] \
   && [ -d tests/integration ] && ls tests/integration/test_*.py >/dev/null 2>&1; then
  venv=$(bash scripts/integration-env.sh | tail -n 1)
  "$venv/bin/python" -m pytest -q -m integration tests/integration
fi
