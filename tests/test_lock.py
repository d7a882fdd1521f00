"""The locks (requirements/*.lock) and the check that what is installed matches them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_lock.py"
sys.path.insert(0, str(CHECK.parent))
import check_lock  # noqa: E402

sys.path.remove(str(CHECK.parent))


def _run(lock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), str(lock)], capture_output=True, text=True)


def test_a_locked_version_that_differs_from_the_installed_one_fails(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text(f"# comment\npytest=={version('pytest')}\nnumpy==0.0.1\n")
    done = _run(lock)
    assert done.returncode == 1
    assert f"numpy: locked 0.0.1, installed {version('numpy')}" in done.stderr
    assert "pytest" not in done.stderr.replace(str(lock), "")


def test_a_locked_package_that_is_not_installed_fails(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("surely-not-an-installed-package==1.0\n")
    done = _run(lock)
    assert done.returncode == 1 and "not installed" in done.stderr


def test_matching_versions_pass_and_local_labels_match(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    torch_version = version("torch").split("+", 1)[0]  # 2.13.0+cpu is locked as 2.13.0
    lock.write_text(f"torch=={torch_version}\nPyTest=={version('pytest')}\n")
    done = _run(lock)
    assert done.returncode == 0, done.stderr
    assert "2 packages match" in done.stdout


def test_a_line_that_is_not_a_pin_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("numpy>=1\n")
    done = _run(lock)
    assert done.returncode != 0 and "not a 'name==version' pin" in (done.stdout + done.stderr)


def _pins(name: str) -> dict[str, str]:
    return check_lock.read_lock(ROOT / "requirements" / name)


def test_the_fast_lock_pins_every_declared_dependency_inside_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"]]
    for extra in ("dev", "safetensors"):
        reqs += project["optional-dependencies"][extra]
    pins = _pins("fast.lock")
    for raw in reqs:
        req = Requirement(raw)
        name = check_lock._norm(req.name)
        assert name in pins, f"{name} is not in requirements/fast.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {raw}"
    assert pins["torch"] == "2.13.0"  # the local CPU wheel; anything else pulls a CUDA build


def test_the_integration_lock_pins_the_integration_set() -> None:
    pins = _pins("integration.lock")
    script = (ROOT / "scripts" / "integration-env.sh").read_text()
    for name in ("torch", "torchvision", "ultralytics", "timm", "lightning"):
        assert name in pins
        assert f'"{name}=={pins[name]}"' in script, f"integration-env.sh pins another {name}"
    for name in ("pytest", "safetensors", "jsonschema", "packaging", "pip"):
        assert name in pins
