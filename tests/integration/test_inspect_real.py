"""`coordatt-diag inspect` on checkpoints written by the real Ultralytics, timm and Lightning.

Run in the integration venv (scripts/integration-env.sh prints its path):

    "$VENV/bin/python" -m pytest -m integration tests/integration

The session fixture runs make_checkpoints.py (reusing its output when the manifest is up to
date). Every file in the manifest is inspected; the test asserts the blocks the manifest expects
and that each mask's mean and std equal those of the masks gathered by hand-made forward hooks
on the gates (independently of coordatt_diag's capture code). Network access is blocked
throughout (conftest.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

if not all(importlib.util.find_spec(p) for p in ("ultralytics", "timm", "safetensors")):
    pytest.skip("needs the integration venv (scripts/integration-env.sh): ultralytics, timm, "
                "safetensors", allow_module_level=True)

# What make_checkpoints.py writes (relative paths); the manifest must list exactly these.
TIMM_MODELS = [f"resnet18_{a}" for a in
               ("coord", "scoord", "ela", "strip", "se", "eca", "cbam", "lcbam")]
TIMM_MODELS.append("mobilevit_xxs_coord")
EXPECTED_FILES = sorted(
    [f"yolo/{v}/weights/{f}.pt" for v in ("coordatt", "cbam")
     for f in ("last", "best", "epoch0", "epoch1")]
    + [f"timm/{m}{suffix}" for m in TIMM_MODELS for suffix in (".pt", ".state_dict.pt")]
    + ["timm/resnet18_coord.safetensors", "lightning/small_coordnet.ckpt"]
)
BATCH, SAMPLES, IMGSZ = 2, 4, 64

# Hand-made hooks: block class -> [(gate submodule, mask kinds in call order, sigmoid applied
# to the submodule's output by the block's forward rather than by a module)], from the sources
# of custom_blocks.py, ultralytics 8.4.190 nn/modules/conv.py and timm 1.0.31 layers/.
GATES: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "custom_blocks.CoordAtt": [("conv_h", ("a_h",), True), ("conv_w", ("a_w",), True)],
    "ultralytics.nn.modules.conv.CBAM": [("channel_attention.act", ("channel",), False),
                                         ("spatial_attention.act", ("spatial",), False)],
    "ultralytics.nn.modules.conv.ChannelAttention": [("act", ("channel",), False)],
    "ultralytics.nn.modules.conv.SpatialAttention": [("act", ("spatial",), False)],
    "timm.layers.coord_attn.CoordAttn": [("gate", ("a_h", "a_w"), False)],
    "timm.layers.coord_attn.EfficientLocalAttn": [("gate", ("a_h", "a_w"), False)],
    "timm.layers.coord_attn.SimpleCoordAttn": [("gate", ("a_hw",), False)],
    "timm.layers.coord_attn.StripAttn": [("gate", ("a_hw",), False)],
    "timm.layers.squeeze_excite.SEModule": [("gate", ("channel",), False)],
    "timm.layers.eca.EcaModule": [("gate", ("channel",), False)],
    "timm.layers.cbam.CbamModule": [("channel.gate", ("channel",), False),
                                    ("spatial.gate", ("spatial",), False)],
    "timm.layers.cbam.LightCbamModule": [("channel.fc2", ("channel",), True),
                                         ("spatial.gate", ("spatial",), False)],
}


@pytest.fixture(scope="session")
def checkpoints() -> tuple[Path, dict[str, Any]]:
    """(folder, manifest) of the real checkpoints: made once, reused while up to date."""
    t0 = time.time()
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(HERE / "make_checkpoints.py")], env=env,
                          capture_output=True, text=True, timeout=1200, check=False)
    if proc.returncode != 0:
        pytest.fail(f"make_checkpoints.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
                    pytrace=False)
    manifest_path = Path(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads(manifest_path.read_text())
    sys.stderr.write(f"\n[integration] checkpoints ready in {time.time() - t0:.1f}s "
                     f"(generation timings {manifest['timings_s']})\n")
    return manifest_path.parent, manifest


@pytest.fixture(scope="session")
def tensors_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("inputs") / "x.pt"
    torch.save(torch.randn(SAMPLES, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0)),
               path)
    return path


@pytest.fixture
def import_path() -> Iterator[None]:
    """custom_blocks / timm_factories importable for the hand-made reference (as --path does)."""
    added = str(HERE) not in sys.path
    if added:
        sys.path.insert(0, str(HERE))
    yield
    if added and str(HERE) in sys.path:
        sys.path.remove(str(HERE))


def _entry(manifest: dict[str, Any], rel: str) -> dict[str, Any]:
    for e in manifest["files"]:
        if e["path"] == rel:
            return dict(e)
    raise AssertionError(f"{rel} is not in the manifest")


def _cli_args(entry: dict[str, Any], path: Path) -> list[str]:
    """The flags a user passes for this file (tests/integration/README.md)."""
    args = [str(path)]
    if entry["needs_trust"]:
        args.append("--trust")
    if entry.get("imports") or entry.get("factory"):
        args += ["--path", str(HERE)]
    for mod in entry.get("imports", []):
        args += ["--import", mod]
    if entry.get("factory"):
        args += ["--model", entry["factory"], "--model-args", json.dumps(entry["model_args"])]
    return args


def _inspect_in_process(args: list[str]) -> dict[str, Any]:
    from typer.testing import CliRunner

    from coordatt_diag.cli import app

    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
    result = runner.invoke(app, ["inspect", *args, "--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _reference_model(entry: dict[str, Any], path: Path) -> Any:
    """The model in the file, loaded by hand (not by coordatt_diag), float32, eval."""
    import torch

    if entry["format"] == "torch-pickle":
        obj = torch.load(path, map_location="cpu", weights_only=False)
        model = obj[entry["model_key"]] if "model_key" in entry else obj
    else:
        mod_name, _, fn = entry["factory"].partition(":")
        model = getattr(importlib.import_module(mod_name), fn)(**entry["model_args"])
        if entry["format"] == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if "state_dict" in state:
                prefix = entry.get("state_dict_prefix", "")
                state = {k[len(prefix):]: v for k, v in state["state_dict"].items()
                         if k.startswith(prefix)}
        model.load_state_dict(state, strict=True)
    return model.float().eval()


def _hand_made_masks(model: Any, blocks: list[dict[str, Any]], x: Any) -> dict[str, dict[str, Any]]:
    """Every mask of every block, gathered by forward hooks on the gates, over batches of BATCH."""
    import torch

    modules = dict(model.named_modules())
    found: dict[str, dict[str, list[Any]]] = {b["name"]: {} for b in blocks}
    handles = []

    def hook_for(block: str, kinds: tuple[str, ...], sigmoid: bool) -> Callable[..., None]:
        calls = [0]

        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            mask = out.sigmoid() if sigmoid else out
            kind = kinds[calls[0] % len(kinds)]
            calls[0] += 1
            found[block].setdefault(kind, []).append(mask.detach().double().flatten())

        return hook

    for b in blocks:
        for sub, kinds, sigmoid in GATES[b["class"]]:
            gate = modules[f"{b['name']}.{sub}" if b["name"] else sub]
            handles.append(gate.register_forward_hook(hook_for(b["name"], kinds, sigmoid)))
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], BATCH):
                model(x[start:start + BATCH])
    finally:
        for h in handles:
            h.remove()
    return {name: {k: torch.cat(v) for k, v in masks.items()} for name, masks in found.items()}


def test_manifest_lists_every_file(checkpoints: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = checkpoints
    assert sorted(e["path"] for e in manifest["files"]) == EXPECTED_FILES
    assert manifest["network_blocked"] is True
    for rel in EXPECTED_FILES:
        assert (out / rel).is_file()


@pytest.mark.usefixtures("import_path")
@pytest.mark.parametrize("rel", EXPECTED_FILES)
def test_inspect_matches_hand_made_hooks(
    rel: str, checkpoints: tuple[Path, dict[str, Any]], tensors_file: Path, validate_report: Any
) -> None:
    import torch

    out, manifest = checkpoints
    entry = _entry(manifest, rel)
    data = _inspect_in_process(
        [*_cli_args(entry, out / rel), "--tensors", str(tensors_file), "--batch-size", str(BATCH)])
    validate_report(data)

    # the blocks the manifest expects, with their masks
    assert data["summary"]["blocks"] == entry["expected_block_count"]
    assert [b["name"] for b in data["blocks"]] == [b["name"] for b in entry["blocks"]]
    for got, want in zip(data["blocks"], entry["blocks"], strict=True):
        assert got["type"] == want["class"].rsplit(".", 1)[1]
        assert sorted(got["masks"]) == sorted(want["masks"]), got["name"]

    # the checkpoint section
    ck = data["checkpoint"]
    if entry["kind"].startswith("ultralytics"):
        assert ck["format"] == "ultralytics" and ck["epoch"] == entry["epoch"]
        assert ck["extra"]["model_key"] == entry["model_key"]
        assert ck["extra"]["train_args"]["imgsz"] == IMGSZ
        assert ck["extra"]["version"] == manifest["packages"]["ultralytics"]
    elif entry["kind"] == "lightning-ckpt":
        raw = torch.load(out / rel, map_location="cpu", weights_only=False)
        assert ck["format"] == "lightning" and ck["epoch"] == raw["epoch"]
        assert ck["extra"]["global_step"] == raw["global_step"] == 1
    elif entry["format"] == "safetensors":
        assert ck["format"] == "safetensors"

    # the statistics are those of the masks gathered by hand
    _assert_hand_made_stats(data, _reference_model(entry, out / rel), entry["blocks"],
                            torch.load(tensors_file))


def _assert_hand_made_stats(data: dict[str, Any], model: Any, blocks: list[dict[str, Any]],
                            x: Any) -> None:
    ref = _hand_made_masks(model, blocks, x)
    for block in data["blocks"]:
        masks = ref[block["name"]]
        assert sorted(masks) == sorted(block["masks"]), block["name"]
        for kind, values in masks.items():
            stats = block["masks"][kind]
            assert stats["count"] == values.numel()
            assert stats["mean"] == pytest.approx(float(values.mean()), abs=1e-4)
            assert stats["std"] == pytest.approx(float(values.std()), abs=1e-4)
            assert stats["min"] == pytest.approx(float(values.min()), abs=1e-4)
            assert stats["max"] == pytest.approx(float(values.max()), abs=1e-4)


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("coordatt-diag")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "coordatt_diag"]
    return subprocess.run([*cmd, "inspect", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600, check=False)


@pytest.mark.parametrize("variant", ["coordatt", "cbam"])
def test_yolo_without_trust_is_refused_with_its_classes(
    variant: str, checkpoints: tuple[Path, dict[str, Any]], offline_env: dict[str, str]
) -> None:
    out, manifest = checkpoints
    rel = f"yolo/{variant}/weights/last.pt"
    proc = _run_cli([str(out / rel)], offline_env)
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: ")
    assert "--trust" in line and "Traceback" not in line
    assert "ultralytics.nn.tasks.DetectionModel" in line
    want = "custom_blocks.CoordAtt" if variant == "coordatt" else "ultralytics.nn.modules.conv.CBAM"
    assert want in line


@pytest.mark.parametrize("variant", ["coordatt", "cbam"])
def test_yolo_subprocess_with_letterboxed_images(
    variant: str, checkpoints: tuple[Path, dict[str, Any]], offline_env: dict[str, str],
    tmp_path: Path, validate_report: Any,
) -> None:
    """A fresh process (ultralytics imported by coordatt-diag itself): offline, nothing but the
    JSON on stdout, no settings written to the home folder, YOLO's default size 640."""
    out, manifest = checkpoints
    entry = _entry(manifest, f"yolo/{variant}/weights/best.pt")
    env = dict(offline_env)
    for key in ("YOLO_CONFIG_DIR", "YOLO_VERBOSE"):  # coordatt-diag must set them itself
        env.pop(key, None)
    env["HOME"] = str(tmp_path / "home")
    images = out / "data" / "images" / "val"
    proc = _run_cli([*_cli_args(entry, out / entry["path"]), "--images", str(images),
                     "--batch-size", "4", "--batches", "1", "--json", "-"], env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    validate_report(data)
    assert data["inputs"]["shape"] == [3, 640, 640] and data["inputs"]["source"] == "images"
    assert data["checkpoint"]["epoch"] == -1 and data["checkpoint"]["format"] == "ultralytics"
    assert len(data["blocks"]) == entry["expected_block_count"] == 2
    assert not (tmp_path / "home" / ".config").exists()


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _inspect_built_model(model: Any, tmp_path: Path, tensors_file: Path) -> dict[str, Any]:
    """Save a model built here whole, inspect it, check its statistics against the hooks."""
    import torch

    torch.manual_seed(0)
    for m in model.modules():  # move the gates off their untrained ~0.5
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)):
            torch.nn.init.normal_(m.weight, std=0.5)
    model = model.eval()
    path = tmp_path / "built.pt"
    torch.save(model, path)
    data = _inspect_in_process([str(path), "--trust", "--tensors", str(tensors_file),
                                "--batch-size", str(BATCH)])
    blocks = [{"name": b["name"], "class": _class_name(model.get_submodule(b["name"]))}
              for b in data["blocks"]]
    _assert_hand_made_stats(data, model, blocks, torch.load(tensors_file))
    return data


def test_ultralytics_channel_and_spatial_attention_alone(tmp_path: Path, tensors_file: Path) -> None:
    from torch import nn
    from ultralytics.nn.modules import CBAM, ChannelAttention, Conv, SpatialAttention

    model = nn.Sequential(Conv(3, 16, 3, 2), ChannelAttention(16), Conv(16, 16, 3, 1),
                          SpatialAttention(7), CBAM(16, 7))
    data = _inspect_built_model(model, tmp_path, tensors_file)
    assert [(b["name"], b["type"], list(b["masks"])) for b in data["blocks"]] == [
        ("1", "ChannelAttention", ["channel"]), ("3", "SpatialAttention", ["spatial"]),
        ("4", "CBAM", ["channel", "spatial"])]


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_timm_coord_attn_gates(gate: str, tmp_path: Path, tensors_file: Path) -> None:
    from timm.layers.coord_attn import CoordAttn
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                          CoordAttn(16, gate_layer=gate))
    data = _inspect_built_model(model, tmp_path, tensors_file)
    assert [(b["name"], b["type"], sorted(b["masks"])) for b in data["blocks"]] == [
        ("3", "CoordAttn", ["a_h", "a_w"])]
