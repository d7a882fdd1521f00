"""Fail when what is installed differs from a lock file.

Usage: python scripts/check_lock.py requirements/fast.lock

Every ``name==version`` line of the lock must be installed at exactly that version (a local
label such as torch's ``+cpu`` is allowed, as pip's ``==`` allows it). Prints one line per
difference and exits 1 when there is any, 0 otherwise. Run by scripts/test.sh after each
install and by scripts/integration-env.sh, so a suite never runs on unlocked versions.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """The pins of a lock file (``name==version`` lines; comments and blanks skipped)."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise SystemExit(f"error: {path}:{n}: not a 'name==version' pin: {raw!r}")
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def differences(pins: dict[str, str]) -> list[str]:
    """One line per locked package that is missing or installed at another version."""
    out = []
    for name, want in sorted(pins.items()):
        try:
            have = version(name)
        except PackageNotFoundError:
            out.append(f"{name}: locked {want}, not installed")
            continue
        if have != want and have.split("+", 1)[0] != want:
            out.append(f"{name}: locked {want}, installed {have}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_lock.py LOCKFILE", file=sys.stderr)
        return 2
    path = Path(argv[0])
    diff = differences(read_lock(path))
    for line in diff:
        print(f"lock mismatch ({path}): {line}", file=sys.stderr)
    if diff:
        print(f"error: {len(diff)} installed version(s) differ from {path}; "
              "run scripts/test.sh (it installs the lock) or scripts/update-lock.sh", file=sys.stderr)
        return 1
    print(f"lock ok: {len(read_lock(path))} packages match {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
