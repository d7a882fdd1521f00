#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs exactly the locked versions of what
# the tests need (requirements/fast.lock, a pip constraints file), checks that what is
# installed matches the lock, then runs ruff, the import-layer contract, mypy and the fast
# test suite; the integration suite runs when its venv can be built (see
# scripts/integration-env.sh, locked by requirements/integration.lock; skip it with
# COORDATT_DIAG_SKIP_INTEGRATION=1).
#
# Where it installs: into the venv ${COORDATT_DIAG_TEST_VENV:-.venv} (made if missing), or
# into the interpreter named by PYTHON=/path/to/python when that is set.
# Moving the lock forward on purpose: scripts/update-lock.sh (docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  venv=${COORDATT_DIAG_TEST_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  PY=$venv/bin/python
fi
pipi() { "$PY" -m pip install -q --disable-pip-version-check -c requirements/fast.lock "$@"; }
# torch first, from the local CPU wheel: nothing else may pull a CUDA build
pipi torch==2.13.0
pipi -e '.[dev,safetensors]'
"$PY" scripts/check_lock.py requirements/fast.lock
"$PY" -m ruff check coordatt_diag tests scripts benchmarks
"$PY" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' --no-cache
"$PY" -m mypy
set +e
"$PY" -m pytest -q -m "not integration" "$@"
rc=$?
set -e
# 5 = no test collected (a -k that matches nothing): not a failure of the suite itself
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
if [ "${COORDATT_DIAG_SKIP_INTEGRATION:-0}" != "1" ] && [ -x scripts/integration-env.sh ] \
   && [ -d tests/integration ] && ls tests/integration/test_*.py >/dev/null 2>&1; then
  venv=$(bash scripts/integration-env.sh | tail -n 1)
  "$venv/bin/python" scripts/check_lock.py requirements/integration.lock
  "$venv/bin/python" -m pytest -q -m integration tests/integration
fi
