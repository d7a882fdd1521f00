"""The committed digits demo pair (examples/digits_*.pt, built by scripts/make_demo.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from coordatt_diag.blocks import CoordinateAtt
from coordatt_diag.demo import IMG_SIZE, digits_net

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STEMS = ("healthy", "collapsed")
FACTORY = "coordatt_diag.demo:digits_net"


def _load(stem: str, folder: Path = EXAMPLES) -> tuple[nn.Module, dict]:
    ckpt = torch.load(str(folder / f"digits_{stem}.pt"), map_location="cpu", weights_only=True)
    model = digits_net()
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    return model, ckpt


def _samples(folder: Path = EXAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.load(str(folder / "digits_samples.pt"), weights_only=True)
    y = torch.load(str(folder / "digits_labels.pt"), weights_only=True)
    return x, y


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
    """Accuracy and, per CoordinateAtt block, ``torch.std`` of ``_last_ah`` / ``_last_aw``."""
    acc = float((model(x).argmax(dim=1) == y).float().mean())
    stds = {}
    for name, mod in model.named_modules():
        if isinstance(mod, CoordinateAtt):
            assert mod._last_ah is not None and mod._last_aw is not None
            stds[name] = (float(torch.std(mod._last_ah)), float(torch.std(mod._last_aw)))
    return acc, stds


def test_samples_and_labels_format() -> None:
    x, y = _samples()
    assert x.dtype == torch.float32 and x.dim() == 4
    assert tuple(x.shape[1:]) == (1, IMG_SIZE, IMG_SIZE)
    assert 64 <= x.shape[0] <= 128
    assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
    assert set(y.tolist()) == set(range(10))


@pytest.mark.parametrize("stem", STEMS)
def test_checkpoint_loads_strict_and_is_accurate(stem: str) -> None:
    model, ckpt = _load(stem)
    assert ckpt["epoch"] == 12
    meta = ckpt["meta"]
    assert meta["factory"] == FACTORY
    assert meta["weight_decay"] == {"healthy": 5e-4, "collapsed": 1e-2}[stem]
    assert meta["test_accuracy"] >= 0.9
    assert (EXAMPLES / f"digits_{stem}.pt").stat().st_size < 500_000
    x, y = _samples()
    acc, stds = _evaluate(model, x, y)
    assert acc >= 0.9
    assert list(stds) == ["stage1.att", "stage2.att", "stage3.att"]


def test_collapsed_masks_are_near_constant() -> None:
    model, _ = _load("collapsed")
    _, stds = _evaluate(model, *_samples())
    assert any(max(s) < 0.03 for s in stds.values()), stds


def test_healthy_masks_vary() -> None:
    model, _ = _load("healthy")
    _, stds = _evaluate(model, *_samples())
    assert all(min(s) >= 0.05 for s in stds.values()), stds


def test_factory_matches_the_cli_spec() -> None:
    from coordatt_diag.load.checkpoint import build_from_factory

    model = build_from_factory(FACTORY, None)
    assert sum(isinstance(m, CoordinateAtt) for m in model.modules()) == 3


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.005, 0.30 * abs(b))


@pytest.mark.slow
def test_retraining_reproduces_the_committed_pair(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_demo.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    x, y = _samples()
    new_x, new_y = _samples(tmp_path)
    assert torch.allclose(new_x, x, atol=1e-5) and torch.equal(new_y, y)
    for stem in STEMS:
        ref_acc, ref_stds = _evaluate(_load(stem)[0], x, y)
        new_acc, new_stds = _evaluate(_load(stem, tmp_path)[0], x, y)
        assert abs(new_acc - ref_acc) <= 0.03, (stem, new_acc, ref_acc)
        assert new_stds.keys() == ref_stds.keys()
        for block, ref in ref_stds.items():
            for axis, a, b in zip(("a_h", "a_w"), new_stds[block], ref, strict=True):
                assert _close(a, b), (stem, block, axis, a, b)
