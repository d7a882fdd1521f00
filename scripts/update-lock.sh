#!/usr/bin/env bash
# Moves the locks forward on purpose: builds each environment from nothing with the newest
# versions the project's ranges allow (torch stays 2.13.0 from the local CPU wheel for the fast
# suite; the integration set keeps its pinned torch/torchvision/ultralytics/timm/lightning),
# writes requirements/fast.lock and requirements/integration.lock from `pip freeze`, then runs
# the whole test command against the new locks. Review `git diff requirements/` and commit
# when the suite passes; on failure the old locks are put back.
#
# Usage: scripts/update-lock.sh [fast|integration|all]   (default: all)
# Schedule: once a month, and whenever a dependency range in pyproject.toml changes
# (docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
case "$which" in fast|integration|all) ;; *) echo "usage: $0 [fast|integration|all]" >&2; exit 2 ;; esac
work=$(mktemp -d)
cp requirements/fast.lock requirements/integration.lock "$work/"
restore() { cp "$work/fast.lock" "$work/integration.lock" requirements/; }
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
header() {
  echo "# The exact versions $1, as a pip"
  echo "# constraints file. Written by scripts/update-lock.sh $2 on $(date -u +%Y-%m-%d); re-run it, do not edit."
}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$which" != integration ]; then
  python3 -m venv "$work/fast"
  "$work/fast/bin/python" -m pip install -q torch==2.13.0
  "$work/fast/bin/python" -m pip install -q -e '.[dev,safetensors]'
  { header "the fast suite (scripts/test.sh) installs" fast
    echo "# torch is the local CPU wheel (2.13.0+cpu); the '+cpu' label is matched by '==2.13.0'."
    "$work/fast/bin/python" -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'
  } > requirements/fast.lock
fi
if [ "$which" != fast ]; then
  # an empty constraints file: the integration script's pinned set, everything else newest
  : > "$work/empty.lock"
  COORDATT_DIAG_INTEGRATION_LOCK="$work/empty.lock" COORDATT_DIAG_INTEGRATION_VENV="$work/integration" \
    bash scripts/integration-env.sh --rebuild >/dev/null
  { header "of the integration environment (scripts/integration-env.sh)" integration
    echo "pip==$("$work/integration/bin/python" -m pip --version | cut -d' ' -f2)"
    "$work/integration/bin/python" -m pip freeze --exclude-editable
  } > requirements/integration.lock
fi
git --no-pager diff --stat requirements/ || true
# the new locks must pass the whole suite, installed from scratch
if ! COORDATT_DIAG_TEST_VENV="$work/test-venv" COORDATT_DIAG_INTEGRATION_VENV="$work/integration-check" \
    bash scripts/test.sh; then
  restore
  echo "error: the suite fails on the new locks; the old ones are back in requirements/" >&2
  exit 1
fi
echo "locks updated and the suite passes: review 'git diff requirements/' and commit"
