"""Integration suite: real Ultralytics / timm / Lightning checkpoints, run in the integration venv.

Everything collected under this folder is marked ``integration``. Network access is blocked
for every test: in-process (autouse fixture ``_no_network``) and, through ``offline_env``, in
subprocesses (the ``coordatt-diag`` CLI). An attempt fails the test even when the library that
made it swallowed the error.

This module must import in the main test environment too (pytest loads it while collecting
``tests/``), so nothing third-party is imported at module level.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
NETBLOCK_DIR = HERE / "netblock"

# Offline and quiet for Ultralytics (importing it - which unpickling an Ultralytics checkpoint
# does - otherwise resolves one.one.one.one / dns.google in is_online() and writes
# ~/.config/Ultralytics/settings.json), Hugging Face hub, matplotlib.
OFFLINE_VARS = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "YOLO_VERBOSE": "false",
    "HF_HUB_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}


def _load_netblock() -> Any:
    spec = importlib.util.spec_from_file_location(
        "coordatt_diag_netblock", NETBLOCK_DIR / "sitecustomize.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_netblock = _load_netblock()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _threads() -> str:
    # One torch thread unless the user says otherwise: on a small shared machine (2 cores, other
    # jobs running) OpenMP's spinning worker threads made each small conv 40-100x slower than
    # with one thread, and this suite runs tiny models where more threads gain nothing.
    return os.environ.get("OMP_NUM_THREADS") or "1"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(int(_threads()))


@pytest.fixture(scope="session")
def yolo_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLO_CONFIG_DIR of the session's own (Ultralytics writes settings.json there)."""
    return tmp_path_factory.mktemp("ultralytics-config")


@pytest.fixture(autouse=True)
def _no_network(
    monkeypatch: pytest.MonkeyPatch, yolo_config_dir: Path
) -> Iterator[None]:
    """Block sockets and DNS in this process for the test; fail it on any attempt."""
    for key, value in OFFLINE_VARS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(yolo_config_dir))
    before = len(_netblock.ATTEMPTS)
    _netblock.install()
    try:
        yield
    finally:
        _netblock.uninstall()
    attempts = _netblock.ATTEMPTS[before:]
    if attempts:
        pytest.fail("network access attempted:\n" + "\n".join(attempts), pytrace=False)


@pytest.fixture
def offline_env(tmp_path: Path, yolo_config_dir: Path) -> Iterator[dict[str, str]]:
    """Environment for subprocesses: sockets blocked there too (sitecustomize), offline vars.

    After the test, any attempt a subprocess logged fails the test.
    """
    netlog = tmp_path / "network-attempts.log"
    env = dict(os.environ)
    env.update(OFFLINE_VARS)
    env["YOLO_CONFIG_DIR"] = str(yolo_config_dir)
    env["OMP_NUM_THREADS"] = _threads()
    env["COORDATT_DIAG_NO_NETWORK"] = "1"
    env["COORDATT_DIAG_NETLOG"] = str(netlog)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(NETBLOCK_DIR), env.get("PYTHONPATH", "")) if p
    )
    yield env
    if netlog.exists() and netlog.read_text().strip():
        pytest.fail("network access attempted in a subprocess:\n" + netlog.read_text(),
                    pytrace=False)
