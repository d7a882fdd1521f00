"""Device placement, half precision and multi-process runs under torchrun (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from coordatt_diag.cli import app
from coordatt_diag.errors import UsageError
from coordatt_diag.load.devices import resolve_device, resolve_placement
from coordatt_diag.runs.distributed import RankError, raise_first_error, to_device
from coordatt_diag.stats.masks import MaskAccumulator

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--model", "coordatt_diag.demo:digits_net", "--tensors",
        str(ROOT / "examples" / "digits_samples.pt"), "--batch-size", "16"]
HEALTHY = str(ROOT / "examples" / "digits_healthy.pt")
NO_CUDA = not torch.cuda.is_available()


def _torchrun(n: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(NO_COLOR="1", COLUMNS="200", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "coordatt_diag", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if path == "" and k == "tool":
                continue
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


def test_two_gloo_processes_equal_one(tmp_path: Path, runner: Any) -> None:
    one = runner.invoke(app, ["inspect", HEALTHY, *DEMO, "--json", str(tmp_path / "one.json")])
    assert one.exit_code == 0, one.output
    two = _torchrun(2, ["inspect", HEALTHY, *DEMO, "--json", "two.json"], tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert a["tool"]["processes"] == 1 and b["tool"]["processes"] == 2
    _assert_same(a, b)
    # rank 0 alone prints: one table, not two
    assert two.stdout.count("3 blocks: 3 ok") == 1


def test_check_under_torchrun_exits_like_one_process(tmp_path: Path) -> None:
    collapsed = str(ROOT / "examples" / "digits_collapsed.pt")
    res = _torchrun(2, ["check", collapsed, *DEMO, "--fail-on", "warn"], tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stdout.count("near_constant") >= 1


def test_a_failing_rank_fails_every_rank(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    try:
        from rank_models import fails_on_rank_one
    finally:
        sys.path.pop(0)
    ckpt = tmp_path / "net.pt"
    torch.save(fails_on_rank_one().state_dict(), ckpt)
    args = ["inspect", str(ckpt), "--path", str(ROOT / "tests" / "fixtures"), "--model",
            "rank_models:fails_on_rank_one", "--tensors", str(ROOT / "examples" / "digits_samples.pt"),
            "--batch-size", "16", "--json", "out.json"]
    res = _torchrun(2, args, tmp_path)
    assert res.returncode != 0
    assert "rank 1: the model's forward pass failed" in res.stderr
    assert "simulated failure on rank 1" in res.stderr
    assert not (tmp_path / "out.json").exists()


def test_raise_first_error_keeps_the_exit_code() -> None:
    raise_first_error([None, None])
    with pytest.raises(RankError, match="rank 1: bad input") as info:
        raise_first_error([None, ("InputError", "bad input", 3), ("UsageError", "x", 2)])
    assert info.value.exit_code == 3


def test_to_device_moves_accumulators_and_leaves_models_alone() -> None:
    acc = MaskAccumulator()
    acc.update(torch.rand(2, 3, 4, 1))
    model = nn.Linear(2, 2)
    moved = to_device({"acc": acc, "model": model}, "cpu")
    assert moved["model"] is model and isinstance(model.weight, nn.Parameter)
    assert moved["acc"].finalize() == acc.finalize()


def test_auto_device_and_errors() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(UsageError, match="is not a device"):
        resolve_device("gpu0")
    with pytest.raises(UsageError, match="half_dtype=.float8."):
        resolve_placement("cpu", half=True, half_dtype="float8")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_usage_error(runner: Any) -> None:
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda:0")
    res = runner.invoke(app, ["inspect", HEALTHY, *DEMO, "--device", "cuda"])
    assert res.exit_code == 2
    assert "CUDA is not available" in res.output
    res = runner.invoke(app, ["inspect", HEALTHY, *DEMO, "--device", "cpu", "--half"])
    assert res.exit_code == 2 and "--half needs a CUDA device" in res.output


def test_report_names_device_and_dtype(tmp_path: Path, runner: Any) -> None:
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["inspect", HEALTHY, *DEMO, "--device", "cpu", "--json", str(out)])
    assert res.exit_code == 0, res.output
    tool = json.loads(out.read_text())["tool"]
    assert tool["device"] == "cpu" and tool["dtype"] == "float32" and tool["processes"] == 1


@pytest.mark.skipif(NO_CUDA, reason="no CUDA device on this machine")
@pytest.mark.parametrize("half", [False, True])
def test_cuda_run_equals_cpu_run(tmp_path: Path, runner: Any, half: bool) -> None:
    cpu, gpu = tmp_path / "cpu.json", tmp_path / "gpu.json"
    assert runner.invoke(app, ["inspect", HEALTHY, *DEMO, "--device", "cpu", "--json",
                               str(cpu)]).exit_code == 0
    extra = ["--half"] if half else []
    res = runner.invoke(app, ["inspect", HEALTHY, *DEMO, "--device", "cuda", *extra, "--json",
                              str(gpu)])
    assert res.exit_code == 0, res.output
    a, b = json.loads(cpu.read_text()), json.loads(gpu.read_text())
    assert b["tool"]["device"].startswith("cuda")
    assert b["tool"]["dtype"] == ("float16" if half else "float32")
    tol = 5e-3 if half else 1e-4
    for x, y in zip(a["blocks"], b["blocks"], strict=True):
        for name, m in x["masks"].items():
            assert y["masks"][name]["mean"] == pytest.approx(m["mean"], abs=tol)
            assert y["masks"][name]["std"] == pytest.approx(m["std"], abs=tol)
