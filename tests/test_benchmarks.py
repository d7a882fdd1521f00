"""The benchmark scripts run and print every figure the docs quote (tiny settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, tmp: Path | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"TMPDIR": str(tmp)} if tmp else {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.slow
def test_overhead_prints_ratios_phases_and_the_whole_process() -> None:
    out = _run("benchmarks/overhead.py", "--runs", "1", "--batches", "1", "--batch-size", "2",
               "--imgsz", "64", "--threads", "1", "--process", "--parts")
    for variant in ("plain", "hooks", "per-batch", "library", "script", "inspect", "std ratio",
                    "mask stats"):
        assert f"  {variant} " in out, variant
    for phase in ("per-batch statistics", "discovery", "memory probe", "rendering",
                  "imports beyond torch", "exit"):
        assert phase in out, phase
    assert "wall ratio min" in out and "CPU-time ratio median" in out and "load" in out
    assert "activations per sample:" in out and "discovery pass's bound" in out
    assert "discovery pass over 5 samples: traced" in out and "keeping the run's statistics" in out
    assert "fixed costs of the library" in out
    assert "inside the statistics' calls" in out


@pytest.mark.slow
def test_versions_compares_two_checkouts_in_one_process(tmp_path: Path) -> None:
    out = _run("benchmarks/versions.py", "--old", str(ROOT), "--runs", "1", "--batches", "1",
               tmp=tmp_path)
    for variant in ("per-batch, this version", "per-batch, old version",
                    "analyze_model, this version", "analyze_model, old version"):
        assert variant in out, variant
    # the renamed copy lives in a temporary folder that is gone afterwards
    assert list(tmp_path.iterdir()) == []


def test_versions_refuses_a_folder_without_the_package(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "benchmarks/versions.py", "--old", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "no coordatt_diag package" in res.stderr
