"""Checkpoint containers besides plain torch.save files: safetensors, Lightning, torch.export,
Ultralytics-shaped dicts (an imitation `ultralytics` package written to a temp folder), and the
environment set before unpickling. The real packages are tested in tests/integration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from coordatt_diag.cli import app
from coordatt_diag.load.checkpoint import load_model, offline_third_party_env
from coordatt_diag.load.inputs import input_size
from tests.fixtures import models as fx

ROOT = Path(__file__).resolve().parent.parent
PAIR = "tests.fixtures.models:coord_pair_net"
YOLO_VARS = ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_VERBOSE", "YOLO_CONFIG_DIR")


def _invoke(runner: Any, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def _error_line(result: Any, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return str(lines[0])


def _json(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


@pytest.fixture
def no_yolo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the YOLO_* variables set; whatever was there comes back after the test."""
    for key in YOLO_VARS:
        monkeypatch.setenv(key, "")  # recorded, so the teardown restores the original state
        monkeypatch.delenv(key)


# --------------------------------------------------------------------------------- safetensors


def test_safetensors_state_dict_loads_without_trust(runner, tmp_path: Path, validate_report) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    path = tmp_path / "pair.safetensors"
    save_file(fx.coord_pair_net().state_dict(), str(path), metadata={"epoch": "3"})
    data = _json(_invoke(runner, "inspect", str(path), "--model", PAIR, "--imgsz", "16",
                         "--batches", "1", "--json", "-"))
    validate_report(data)
    assert data["checkpoint"]["format"] == "safetensors"
    assert data["checkpoint"]["extra"]["metadata"] == {"epoch": "3"}
    assert [b["name"] for b in data["blocks"]] == ["1.att", "2.att"]


def test_safetensors_content_under_another_suffix(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "pair.bin"
    save_file(fx.coord_pair_net().state_dict(), str(path))
    assert load_model(path, factory=PAIR).info.format == "safetensors"


def test_safetensors_needs_model_factory(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    path = tmp_path / "pair.safetensors"
    save_file(fx.coord_pair_net().state_dict(), str(path))
    line = _error_line(_invoke(runner, "inspect", str(path)), 3)
    assert "state dict" in line and "--model" in line


def test_safetensors_without_the_package(runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "pair.safetensors"
    path.write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors -> ImportError
    line = _error_line(_invoke(runner, "inspect", str(path), "--model", PAIR), 3)
    assert "pip install safetensors" in line


def test_corrupt_safetensors(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    line = _error_line(_invoke(runner, "inspect", str(path), "--model", PAIR), 3)
    assert "not a readable" in line


# ----------------------------------------------------------------------------------- lightning


def test_lightning_checkpoint(runner, tmp_path: Path, validate_report) -> None:  # type: ignore[no-untyped-def]
    # as LightningModule.state_dict() writes it: the wrapped model's attribute name as prefix
    state = {f"model.{k}": v for k, v in fx.coord_pair_net().state_dict().items()}
    path = tmp_path / "epoch=4-step=20.ckpt"
    torch.save({"epoch": 4, "global_step": 20, "pytorch-lightning_version": "2.6.6",
                "state_dict": state, "loops": {}, "callbacks": {}, "optimizer_states": [],
                "lr_schedulers": [], "hyper_parameters": {"lr": 0.1, "width": 16}}, path)
    data = _json(_invoke(runner, "inspect", str(path), "--model", PAIR, "--imgsz", "16",
                         "--batches", "1", "--json", "-"))
    validate_report(data)
    ck = data["checkpoint"]
    assert ck["format"] == "lightning" and ck["epoch"] == 4
    assert ck["extra"]["global_step"] == 20
    assert ck["extra"]["hyper_parameters"] == {"lr": 0.1, "width": 16}
    assert len(data["blocks"]) == 2


# ---------------------------------------------------------------------------- compiled archives


def test_torch_export_archive_is_refused(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.pt2"
    exported = torch.export.export(fx.SEBlock(8).eval(), (torch.randn(2, 8, 4, 4),))
    torch.export.save(exported, str(path))
    line = _error_line(_invoke(runner, "inspect", str(path), "--trust"), 3)
    assert "torch.export" in line and "--model" in line and "hook" in line


# --------------------------------------------------------------------------------- ultralytics

FAKE_ULTRALYTICS = {
    "__init__.py": '''
        """Imitates the layout of the real package (ultralytics.nn.tasks.DetectionModel)."""
        import os

        ENV_AT_IMPORT = {k: os.environ.get(k) for k in
                         ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_VERBOSE", "YOLO_CONFIG_DIR")}
        print("Creating new Ultralytics Settings file")  # the real one logs to stdout
    ''',
    "nn/__init__.py": "",
    "nn/tasks.py": '''
        from tests.fixtures.models import YoloLikeDetectionModel


        class DetectionModel(YoloLikeDetectionModel):
            pass
    ''',
}


def _save_yolo_files(pkg_root: Path, out: Path) -> dict[str, Path]:
    """last.pt (stripped: `model` fp16, `ema` None, epoch -1) and epoch3.pt (`ema`, model None),
    written by a separate process that can import the imitation package."""
    code = textwrap.dedent(f'''
        import datetime, pathlib, torch
        from ultralytics.nn.tasks import DetectionModel
        args = {{"task": "detect", "imgsz": 64, "epochs": 4, "data": pathlib.Path("data.yaml"),
                 "lr0": 0.01, "amp": False}}
        common = {{"train_args": args, "date": datetime.datetime(2026, 1, 2).isoformat(),
                   "version": "8.4.190", "optimizer": None, "best_fitness": None}}
        torch.save({{"epoch": -1, "model": DetectionModel().half(), "ema": None, **common}},
                   {str(out / "last.pt")!r})
        torch.save({{"epoch": 3, "model": None, "ema": DetectionModel().half(), "updates": 12,
                     **common}}, {str(out / "epoch3.pt")!r})
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg_root), str(ROOT)]))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
    return {"last": out / "last.pt", "epoch": out / "epoch3.pt"}


@pytest.fixture
def yolo_files(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Path]]]:
    """(folder of the imitation `ultralytics` package, YOLO-shaped checkpoints); afterwards the
    package is gone from sys.modules and sys.path again."""
    pkg_root = tmp_path / "site"
    for rel, text in FAKE_ULTRALYTICS.items():
        f = pkg_root / "ultralytics" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    files = _save_yolo_files(pkg_root, tmp_path)
    yield pkg_root, files
    for name in [m for m in sys.modules if m == "ultralytics" or m.startswith("ultralytics.")]:
        del sys.modules[name]
    while str(pkg_root) in sys.path:
        sys.path.remove(str(pkg_root))


def test_yolo_file_without_trust_lists_its_classes(runner, yolo_files) -> None:  # type: ignore[no-untyped-def]
    _, files = yolo_files
    line = _error_line(_invoke(runner, "inspect", str(files["last"])), 3)
    assert "ultralytics.nn.tasks.DetectionModel" in line and "--trust" in line
    assert "ultralytics package" in line


def test_missing_ultralytics_is_named_with_install_command(runner, yolo_files) -> None:  # type: ignore[no-untyped-def]
    _, files = yolo_files  # the imitation package is not on sys.path here
    assert "ultralytics" not in sys.modules
    line = _error_line(_invoke(runner, "inspect", str(files["last"]), "--trust"), 3)
    assert "'ultralytics'" in line and "pip install ultralytics" in line


@pytest.mark.usefixtures("no_yolo_env")
def test_yolo_last_and_epoch_files(runner, yolo_files, tmp_path: Path, validate_report) -> None:  # type: ignore[no-untyped-def]
    pkg_root, files = yolo_files
    tensors = tmp_path / "x.pt"
    torch.save(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), tensors)
    common = ("--trust", "--path", str(pkg_root), "--tensors", str(tensors), "--json", "-")

    result = _invoke(runner, "inspect", str(files["last"]), *common)
    data = _json(result)  # stdout holds the JSON alone: the package's print went to stderr
    assert "Creating new Ultralytics Settings" in result.stderr
    validate_report(data)
    ck = data["checkpoint"]
    assert ck["format"] == "ultralytics" and ck["epoch"] == -1
    assert ck["extra"]["model_key"] == "model" and ck["extra"]["stride"] == 16
    assert ck["extra"]["train_args"] == {"task": "detect", "imgsz": 64, "epochs": 4,
                                         "data": "data.yaml", "lr0": 0.01, "amp": False}
    assert ck["extra"]["version"] == "8.4.190" and ck["extra"]["date"].startswith("2026-01-02")
    assert [(b["name"], list(b["masks"])) for b in data["blocks"]] == [
        ("model.3", ["channel", "spatial"]), ("model.5", ["channel"])]

    # the statistics are those of the masks recomputed by hand, in float32 (the file is fp16)
    import ultralytics  # the imitation, imported from --path by the run above

    model = torch.load(files["last"], weights_only=False)["model"].float().eval()
    x = torch.load(tensors)
    with torch.no_grad():
        p3_in = model.model[2](model.model[1](model.model[0](x)))
        ref = model.model[3].reference_masks(p3_in)
    for kind, mask in ref.items():
        got = data["blocks"][0]["masks"][kind]
        assert got["mean"] == pytest.approx(float(mask.mean()), abs=1e-5)
        assert got["std"] == pytest.approx(float(mask.std()), abs=1e-5)

    # offline and quiet before the package was imported; the settings folder is not ~/.config
    env = ultralytics.ENV_AT_IMPORT
    assert (env["YOLO_OFFLINE"], env["YOLO_AUTOINSTALL"], env["YOLO_VERBOSE"]) == ("1", "0", "0")
    assert env["YOLO_CONFIG_DIR"] and Path(env["YOLO_CONFIG_DIR"]).is_dir()
    assert Path.home() not in Path(env["YOLO_CONFIG_DIR"]).parents

    data = _json(_invoke(runner, "inspect", str(files["epoch"]), *common))
    ck = data["checkpoint"]
    assert ck["format"] == "ultralytics" and ck["epoch"] == 3 and ck["extra"]["model_key"] == "ema"
    assert len(data["blocks"]) == 2


@pytest.mark.usefixtures("no_yolo_env")
def test_yolo_input_size_default_and_rounding(runner, yolo_files) -> None:  # type: ignore[no-untyped-def]
    pkg_root, files = yolo_files
    common = ("--trust", "--path", str(pkg_root), "--batches", "1", "--batch-size", "1",
              "--json", "-")
    inputs = _json(_invoke(runner, "inspect", str(files["epoch"]), *common))["inputs"]
    assert inputs["shape"] == [3, 640, 640]
    inputs = _json(_invoke(runner, "inspect", str(files["epoch"]), *common, "--imgsz", "100"))[
        "inputs"]
    assert inputs["shape"] == [3, 128, 128]
    assert "--imgsz 100 rounded up to 128" in inputs["note"]


def test_yolo_images_are_letterboxed(tmp_path: Path) -> None:
    from PIL import Image

    from coordatt_diag.load.inputs import open_inputs

    Image.new("RGB", (64, 32), (255, 255, 255)).save(tmp_path / "wide.png")
    stream = open_inputs(images=tmp_path, imgsz=64, model=fx.YoloLikeDetectionModel())
    (batch,) = list(stream.batches())
    # grey (114) bands above and below the white picture, as Ultralytics pads
    assert batch.shape == (1, 3, 64, 64)
    assert torch.allclose(batch[0, :, 0, :], torch.full((3, 64), 114 / 255))
    assert torch.allclose(batch[0, :, 32, :], torch.ones(3, 64))
    plain = open_inputs(images=tmp_path, imgsz=64, model=fx.coord_pair_net())
    assert torch.allclose(next(iter(plain.batches()))[0], torch.ones(3, 64, 64))


def test_input_size_rules() -> None:
    yolo = fx.YoloLikeDetectionModel()  # largest stride 16: the grid is still 32
    assert input_size(yolo, None).imgsz == 640 and input_size(yolo, None).letterbox
    assert input_size(yolo, 64).imgsz == 64 and input_size(yolo, 64).note is None
    assert input_size(yolo, 65).imgsz == 96 and "rounded up" in str(input_size(yolo, 65).note)
    assert input_size(yolo, 8).imgsz == 32
    plain = fx.coord_pair_net()
    assert input_size(plain, None).imgsz == 224 and not input_size(plain, None).letterbox
    assert input_size(plain, 65).imgsz == 65


# ------------------------------------------------------------------------------- environment


@pytest.mark.usefixtures("no_yolo_env")
def test_offline_env_is_set_when_absent() -> None:
    added = offline_third_party_env()
    assert set(added) == set(YOLO_VARS)
    assert (os.environ["YOLO_OFFLINE"], os.environ["YOLO_AUTOINSTALL"]) == ("1", "0")
    assert Path(os.environ["YOLO_CONFIG_DIR"]).is_dir()


@pytest.mark.usefixtures("no_yolo_env")
def test_offline_env_keeps_the_users_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    user = {"YOLO_OFFLINE": "0", "YOLO_AUTOINSTALL": "true", "YOLO_VERBOSE": "true",
            "YOLO_CONFIG_DIR": str(tmp_path)}
    for key, value in user.items():
        monkeypatch.setenv(key, value)
    assert offline_third_party_env() == {}
    assert {k: os.environ[k] for k in user} == user


@pytest.mark.usefixtures("no_yolo_env")
def test_safe_loading_sets_no_environment(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(fx.coord_pair_net().state_dict(), path)
    loaded = load_model(path, factory=PAIR)
    assert loaded.info.format == "state_dict"
    assert not any(k in os.environ for k in YOLO_VARS)
