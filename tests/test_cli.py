"""The inspect command end to end: loading, inputs, errors and their exit codes, JSON output."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coordatt_diag.cli import app
from tests.fixtures import models as fx

FACTORY = "tests.fixtures.models:all_families_net"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": fx.all_families_net().state_dict(), "epoch": 7}, path)
    return path


@pytest.fixture
def module_file(tmp_path: Path) -> Path:
    path = tmp_path / "whole.pt"
    torch.save(fx.all_families_net(), path)
    return path


def _invoke(runner, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)


def _assert_error(result, code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_state_dict_with_factory_json_stdout(runner, state_file: Path, validate_report) -> None:  # type: ignore[no-untyped-def]
    result = _invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--imgsz", "16",
                     "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but JSON on stdout
    validate_report(data)
    assert data["checkpoint"]["format"] == "state_dict" and data["checkpoint"]["epoch"] == 7
    assert len(data["checkpoint"]["sha256"]) == 64
    assert data["inputs"]["source"] == "synthetic" and data["inputs"]["batches"] == 4
    assert data["inputs"]["note"]
    assert [b["name"] for b in data["blocks"]][:2] == ["1.att", "2.att"]
    assert data["summary"]["blocks"] == len(fx.FAMILIES) + 1


def test_table_and_json_file(runner, state_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r" / "report.json"
    result = _invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--imgsz", "16",
                     "--batches", "1", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "8.att" in result.stdout and "CBAM" in result.stdout and "Findings" in result.stdout
    assert json.loads(out.read_text())["inputs"]["batches"] == 1
    assert not [p for p in out.parent.iterdir() if p.name != "report.json"]  # no temp files


def test_pickled_module_refused_without_trust_loaded_with(runner, module_file: Path) -> None:  # type: ignore[no-untyped-def]
    result = _invoke(runner, "inspect", str(module_file), "--imgsz", "16")
    _assert_error(result, 3, "--trust", "tests.fixtures.models.OfficialCoordAtt")
    result = _invoke(runner, "inspect", str(module_file), "--imgsz", "16", "--trust",
                     "--batches", "1", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"]["format"] == "module"


def test_dict_prefers_ema(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "yolo_like.pt"
    ema = fx.Net(fx.CBAM(16), stage=False)
    torch.save({"model": fx.Net(fx.SEBlock(16), stage=False).half(), "ema": ema, "epoch": 3},
               path)
    result = _invoke(runner, "inspect", str(path), "--trust", "--imgsz", "16", "--batches", "1",
                     "--json", "-")
    data = json.loads(result.stdout)
    assert data["checkpoint"]["format"] == "dict:ema"
    assert data["blocks"][0]["type"] == "CBAM"
    path2 = tmp_path / "half.pt"
    torch.save({"model": fx.Net(fx.SEBlock(16), stage=False).half(), "ema": None}, path2)
    result = _invoke(runner, "inspect", str(path2), "--trust", "--imgsz", "16", "--batches",
                     "1", "--json", "-")
    data = json.loads(result.stdout)
    assert data["checkpoint"]["format"] == "dict:model" and data["blocks"][0]["type"] == "SEBlock"


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_file_that_runs_code_is_not_run_without_trust(runner, tmp_path: Path,
                                                      monkeypatch) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    result = _invoke(runner, "inspect", str(path))
    _assert_error(result, 3, "system", "--trust")
    assert not marker.exists()


def test_corrupt_and_truncated_files(runner, state_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(state_file.read_bytes()[:2000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"a": 1})[:-3])
    for path in (trunc, garbage, legacy):
        out = tmp_path / f"{path.stem}.json"
        result = _invoke(runner, "inspect", str(path), "--model", FACTORY, "--json", str(out))
        _assert_error(result, 3, str(path))
        assert not out.exists()
    _assert_error(_invoke(runner, "inspect", str(tmp_path / "missing.pt")), 3, "does not exist")


def test_missing_class_and_module(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pkg = tmp_path / "userblocks"
    pkg.mkdir()
    (pkg / "myatt.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class MyAtt(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Conv2d(4, 4, 1)\n"
        "    def forward(self, x):\n        return x * self.fc(x.mean((2, 3), keepdim=True)).sigmoid()\n"
    )
    code = (f"import sys, torch; sys.path.insert(0, {str(pkg)!r}); import myatt; "
            f"torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), myatt.MyAtt()), "
            f"{str(tmp_path / 'user.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    ckpt = str(tmp_path / "user.pt")
    result = _invoke(runner, "inspect", ckpt, "--trust")
    _assert_error(result, 3, "'myatt'", "--path")
    result = _invoke(runner, "inspect", ckpt, "--trust", "--import", "nosuchmod_xyz")
    _assert_error(result, 3, "nosuchmod_xyz")
    result = _invoke(runner, "inspect", ckpt, "--trust", "--path", str(pkg), "--import", "myatt",
                     "--imgsz", "8", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["blocks"][0]["masks"].keys() == {"channel"}
    (pkg / "myatt.py").write_text("X = 1\n")
    for mod in [m for m in sys.modules if m == "myatt"]:
        del sys.modules[mod]
    result = _invoke(runner, "inspect", ckpt, "--trust", "--path", str(pkg), "--import", "myatt")
    _assert_error(result, 3, "'MyAtt'", "--import")


def test_no_blocks(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "plain.pt"
    torch.save(fx.plain_cnn().state_dict(), path)
    out = tmp_path / "r.json"
    result = _invoke(runner, "inspect", str(path), "--model", "tests.fixtures.models:plain_cnn",
                     "--imgsz", "12", "--json", str(out))
    _assert_error(result, 3, "no attention block", "--blocks")
    assert not out.exists()


def test_state_dict_without_factory_and_mismatch(runner, state_file: Path) -> None:  # type: ignore[no-untyped-def]
    _assert_error(_invoke(runner, "inspect", str(state_file)), 3, "--model")
    _assert_error(_invoke(runner, "inspect", str(state_file), "--model",
                          "tests.fixtures.models:plain_cnn"), 3, "does not fit")
    _assert_error(_invoke(runner, "inspect", str(state_file), "--model", "nocolon"), 2)


def test_images_unreadable_skipped_and_counted(runner, state_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(folder / "b.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)).save(folder / "c.webp")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    result = _invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--images",
                     str(tmp_path / "imgs"), "--imgsz", "16", "--normalize", "imagenet",
                     "--batch-size", "2", "--json", "-")
    assert result.exit_code == 0, result.output
    inputs = json.loads(result.stdout)["inputs"]
    assert inputs["samples"] == 3 and inputs["skipped"] == 1 and inputs["batches"] == 2
    assert inputs["shape"] == [3, 16, 16]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"nope")
    out = tmp_path / "r.json"
    result = _invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--images",
                     str(bad), "--json", str(out))
    _assert_error(result, 3, "could be read")
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_error(_invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--images",
                          str(empty)), 3, "no images")


def test_tensor_inputs_and_wrong_channels(runner, state_file: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pt = tmp_path / "x.pt"
    torch.save([torch.randn(5, 3, 16, 16), torch.randn(2, 3, 16, 16)], pt)
    result = _invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--tensors",
                     str(pt), "--batch-size", "4", "--json", "-")
    inputs = json.loads(result.stdout)["inputs"]
    assert (inputs["samples"], inputs["batches"]) == (7, 3)
    npy = tmp_path / "x.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32))
    out = tmp_path / "r.json"
    result = _invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--tensors",
                     str(npy), "--json", str(out))
    _assert_error(result, 3, "1 channels", "takes 3")
    assert not out.exists()
    bad = tmp_path / "bad.pt"
    torch.save({"x": 1}, bad)
    _assert_error(_invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--tensors",
                          str(bad)), 3, "expected a tensor")


def test_usage_errors(runner, state_file: Path) -> None:  # type: ignore[no-untyped-def]
    _assert_error(_invoke(runner, "inspect", str(state_file), "--model", FACTORY, "--blocks",
                          "("), 2, "--blocks")
    _assert_error(_invoke(runner, "inspect", str(state_file), "--model", FACTORY,
                          "--synthetic", "--tensors", "x.pt"), 2)
    _assert_error(_invoke(runner, "inspect", str(state_file), "--model", FACTORY,
                          "--normalize", "zscore"), 2, "--normalize")
    assert _invoke(runner, "inspect", str(state_file), "--bogus").exit_code == 2


def test_internal_error_is_exit_4(runner, state_file: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import coordatt_diag.runs.inspect as analysis

    def broken(*a: object, **k: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(analysis, "inspect_checkpoint", broken)
    result = _invoke(runner, "inspect", str(state_file))
    assert result.exit_code == 4 and "internal error" in result.stderr
    assert "Traceback" not in result.stderr
    result = _invoke(runner, "inspect", str(state_file), "--debug")
    assert result.exit_code == 4 and "Traceback" in result.stderr


def test_torchscript_archive_is_refused(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "scripted.pt"
    torch.jit.script(fx.SEBlock(8)).save(str(path))
    _assert_error(_invoke(runner, "inspect", str(path)), 3, "TorchScript")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          check=False)


def test_help_and_version_do_not_import_torch() -> None:
    code = ("import sys\nfrom coordatt_diag.cli import app\n"
            "for args in (['--help'], ['--version'], ['inspect', '--help']):\n"
            "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "bad = [m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules]\n"
            "print('IMPORTED', bad)\n")
    result = _run("-c", code)
    assert "IMPORTED []" in result.stdout, result.stdout + result.stderr


def test_python_m_version() -> None:
    from coordatt_diag import __version__

    result = _run("-m", "coordatt_diag", "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"coordatt-diag {__version__}"
