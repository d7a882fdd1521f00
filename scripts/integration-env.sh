#!/usr/bin/env bash
# Builds (or reuses) the integration venv: real third-party packages (torch 2.14.1,
# torchvision, ultralytics, timm, safetensors, lightning, pytest) plus this repository
# installed editable with --no-deps. The venv lives OUTSIDE the repository, in
#   ${COORDATT_DIAG_INTEGRATION_VENV:-${COORDATT_DIAG_CACHE:-$HOME/.cache/coordatt-diag}/integration-venv}
#
# Usage: scripts/integration-env.sh [--rebuild] [--check] [REPO]
#   --rebuild  delete the venv and build it again
#   --check    build nothing: exit 0 (and print the path) only if a complete venv exists
#   REPO       the repository to install editable (default: the one this script lives in)
#
# All progress goes to stderr; the LAST line on stdout is the venv path, so callers do
#   venv=$(bash scripts/integration-env.sh | tail -n 1)
# A marker file is written only after every step succeeded; a venv without it (or with a
# marker for another package set) is treated as half-built and rebuilt from scratch.
#
# Note: PyPI's torch 2.14.1 for Linux is the CUDA build. Its libtorch_cpu.so / libtorch_cuda.so
# link libcudart, libcudnn, ... directly (NEEDED entries), so the nvidia-* wheels cannot be
# left out and no CPU-only 2.14.1 exists on the reachable indexes: the venv is ~6 GB.
# CUDA is simply unavailable at run time on a machine without a GPU; everything runs on CPU.
set -euo pipefail

log() { printf '[integration-env] %s\n' "$*" >&2; }
die() { printf '[integration-env] ERROR: %s\n' "$*" >&2; exit 1; }

rebuild=0
check_only=0
repo=""
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    --check) check_only=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    -*) die "unknown option: $arg" ;;
    *) repo=$arg ;;
  esac
done

if [ -z "$repo" ]; then
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fi
repo=$(cd "$repo" 2>/dev/null && pwd) || die "repository not found: $repo"
[ -f "$repo/pyproject.toml" ] || die "no pyproject.toml in $repo"

cache=${COORDATT_DIAG_CACHE:-$HOME/.cache/coordatt-diag}
venv=${COORDATT_DIAG_INTEGRATION_VENV:-$cache/integration-venv}
marker="$venv/.coordatt-diag-integration-complete"
py=${COORDATT_DIAG_INTEGRATION_PYTHON:-python3.11}
# Every install below is constrained to the lock, so the venv holds exactly its versions.
lock=${COORDATT_DIAG_INTEGRATION_LOCK:-$repo/requirements/integration.lock}
[ -f "$lock" ] || die "no lock file $lock"
lock_sum=$(sha256sum "$lock" | cut -c1-16)

# The heavy, pinned package set. Changing this list changes the marker -> full rebuild.
# ultralytics/timm/lightning are pinned to the versions whose source tests/integration was
# written against (see tests/integration/README.md).
core_reqs=(
  "torch==2.14.1"
  "torchvision==0.29.1"
  "ultralytics==8.4.190"
  "timm==1.0.31"
  "safetensors>=0.4"
  "pytest>=8"
  "packaging"
)
# Optional: installed after the core set; its failure only means the Lightning checkpoint
# is not generated.
optional_reqs=("lightning==2.6.6")
spec="python=3.11 | ${core_reqs[*]} | optional: ${optional_reqs[*]} | lock $lock_sum"

venv_python_ok() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null
}

# Cheap (metadata only; importing torch+ultralytics takes >10 s on 2 cores): the full import
# check runs once, at the end of the build, before the marker is written.
is_complete() {
  [ -f "$marker" ] && [ "$(head -n 1 "$marker")" = "$spec" ] && venv_python_ok \
    && "$venv/bin/python" -I -c 'from importlib.metadata import version as v
for p in ("torch", "torchvision", "ultralytics", "timm", "safetensors", "pytest", "packaging"):
    v(p)' 2>/dev/null
}

# Light test-only extras the integration tests use beside pytest (report schema validation).
test_reqs=("jsonschema>=4")

# Project runtime dependencies ([project].dependencies) minus torch (pinned above), plus
# test_reqs; checked on every call so a pyproject change does not need a full rebuild.
ensure_project() {
  local missing
  missing=$("$venv/bin/python" - "$repo/pyproject.toml" "${test_reqs[@]}" <<'PY'
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"].get("dependencies", [])
for dep in [*deps, *sys.argv[2:]]:
    req = Requirement(dep)
    if req.name.lower() == "torch" or (req.marker and not req.marker.evaluate()):
        continue
    try:
        ok = req.specifier.contains(version(req.name), prereleases=True)
    except PackageNotFoundError:
        ok = False
    if not ok:
        print(dep)
PY
  ) || die "could not read the dependencies of $repo/pyproject.toml"
  if [ -n "$missing" ]; then
    log "installing project dependencies: $(echo "$missing" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    echo "$missing" | xargs "$venv/bin/python" -m pip install -q -c "$lock" 1>&2 \
      || die "pip could not install the project dependencies"
  fi
  local where
  # -I: no cwd on sys.path, so a repo that is merely the current directory does not count
  where=$(cd / && "$venv/bin/python" -I -c 'import coordatt_diag, os; print(os.path.dirname(os.path.dirname(os.path.realpath(coordatt_diag.__file__))))' 2>/dev/null || true)
  if [ "$where" != "$repo" ]; then
    log "installing $repo editable (--no-deps)"
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo" 1>&2 \
      || die "pip install -e $repo --no-deps failed"
  fi
}

mkdir -p "$cache" "$(dirname "$venv")" || die "cannot create $cache"

if [ "$check_only" = 1 ]; then
  is_complete || die "no complete integration venv at $venv (run scripts/integration-env.sh)"
  echo "$venv"
  exit 0
fi

# One builder at a time (parallel test runs would otherwise both rm -rf and rebuild).
exec 9>"$venv.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9 || die "cannot lock $venv.lock"
fi

if [ "$rebuild" = 1 ] || ! is_complete; then
  command -v "$py" >/dev/null 2>&1 || die "$py not found (set COORDATT_DIAG_INTEGRATION_PYTHON)"
  start=$(date +%s)
  if [ -e "$venv" ]; then
    log "removing incomplete or outdated venv $venv"
    rm -rf "$venv" || die "cannot remove $venv"
  fi
  log "building $venv (torch 2.14.1 + nvidia wheels: ~6 GB, a few minutes)"
  "$py" -m venv "$venv" || die "$py -m venv $venv failed"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$venv/bin/python" -m pip install -q -c "$lock" --upgrade pip 1>&2 || log "could not upgrade pip; going on"
  "$venv/bin/python" -m pip install -q -c "$lock" "${core_reqs[@]}" 1>&2 \
    || die "pip could not install: ${core_reqs[*]} (are the package indexes reachable?)"
  if ! "$venv/bin/python" -m pip install -q -c "$lock" "${optional_reqs[@]}" 1>&2; then
    log "WARNING: could not install ${optional_reqs[*]}; the Lightning checkpoint will be skipped"
  fi
  # the import check must neither touch the network nor write ~/.config/Ultralytics
  (cd / && YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$cache/ultralytics-config" \
    "$venv/bin/python" -I -c 'import torch, torchvision, ultralytics, timm, safetensors, pytest') 1>&2 \
    || die "the installed packages do not import"
  ensure_project
  "$venv/bin/python" "$repo/scripts/check_lock.py" "$lock" 1>&2 \
    || die "the venv differs from $lock"
  {
    echo "$spec"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( $(date +%s) - start ))s"
    "$venv/bin/python" -m pip freeze 2>/dev/null
  } >"$marker.tmp" && mv "$marker.tmp" "$marker" || die "cannot write $marker"
  log "built in $(( $(date +%s) - start ))s; $(du -sh "$venv" 2>/dev/null | cut -f1)"
else
  ensure_project
fi

echo "$venv"
