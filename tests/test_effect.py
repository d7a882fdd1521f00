"""Mask effect (`inspect --effect`, `coordatt_diag.runs.effect`): constructed cases, the demo pair, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from coordatt_diag.cli import app
from coordatt_diag.demo import digits_net
from coordatt_diag.health.rules import dead_weight
from coordatt_diag.health.thresholds import Thresholds
from coordatt_diag.reports.terminal import make_console, render
from coordatt_diag.results import Ablation, BlockReport, MaskEffect, Report
from coordatt_diag.runs.effect import load_labels, measure_effect
from coordatt_diag.runs.inspect import find_blocks
from tests.fixtures import models as fx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEMO = "coordatt_diag.demo:digits_net"


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 12, 10, generator=torch.Generator().manual_seed(seed))


def _constructed(**kwargs: float) -> Any:
    """stem -> ConstructedAtt (`stage`) -> flatten -> linear: a head that sees every position."""
    torch.manual_seed(0)
    model = fx.Net(fx.ConstructedAtt(16, **kwargs), c=16, stage=False)  # type: ignore[arg-type]
    model.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 12 * 10, 10))
    return model.eval()


def _effect(model: nn.Module, x: torch.Tensor, **kwargs: object) -> dict[str, MaskEffect | None]:
    specs = find_blocks(model, x[:2])
    return measure_effect(model, specs, [x[:3], x[3:]], **kwargs)  # type: ignore[arg-type]


def test_constant_masks_have_no_effect() -> None:
    model = _constructed(pos=0.0, chan=0.0, bias=0.7)
    nn.init.zeros_(model.stage.proj.weight)  # masks = sigmoid(0.7) everywhere
    effects = _effect(model, _x())
    effect = effects["stage"]
    assert effect is not None and effect.positional is not None
    assert effect.constant.rel_l2 < 1e-6
    assert effect.positional.rel_l2 < 1e-6
    assert effect.constant.top1_agreement == 1.0
    assert effect.accuracy is None and effect.constant.accuracy_drop is None
    assert effect.samples == 6


def test_position_dependent_masks_have_an_effect() -> None:
    effect = _effect(_constructed(pos=4.0, chan=0.0), _x())["stage"]
    assert effect is not None and effect.positional is not None
    assert effect.constant.rel_l2 > 0.05
    assert effect.positional.rel_l2 > 0.05


def test_channel_only_variation_is_kept_by_the_positional_mean() -> None:
    # masks vary across channels only: the positional mean leaves them as they are
    model = _constructed(pos=0.0, chan=3.0)
    nn.init.zeros_(model.stage.proj.weight)
    effect = _effect(model, _x())["stage"]
    assert effect is not None and effect.positional is not None
    assert effect.positional.rel_l2 < 1e-6
    assert effect.constant.rel_l2 > 0.05


@torch.no_grad()
def test_constant_replacement_matches_a_hand_computation() -> None:
    model = _constructed(pos=2.0, chan=1.0)
    x = _x()
    att = model.stage
    base_parts, ablated_parts = [], []
    for batch in (x[:3], x[3:]):
        h = model.stem(batch)
        _, _, hh, ww = h.shape
        a_h = torch.sigmoid(att._pre(h.mean(3, keepdim=True), hh, 2))
        a_w = torch.sigmoid(att._pre(h.mean(2, keepdim=True), ww, 3))
        base_parts.append(model.head(h * a_h * a_w))
        ablated_parts.append(model.head(h * (a_h.mean() * a_w.mean())))
    base, ablated = torch.cat(base_parts), torch.cat(ablated_parts)
    expected = float((ablated - base).double().norm() / base.double().norm())
    effect = _effect(model, x)["stage"]
    assert effect is not None
    assert effect.constant.rel_l2 == pytest.approx(expected, rel=1e-4)
    agree = float((ablated.argmax(1) == base.argmax(1)).double().mean())
    assert effect.constant.top1_agreement == pytest.approx(agree)


@torch.no_grad()
def test_positional_replacement_matches_a_hand_computation() -> None:
    model = _constructed(pos=2.0, chan=1.0)
    x = _x()
    att = model.stage
    h = model.stem(x)
    _, _, hh, ww = h.shape
    a_h = torch.sigmoid(att._pre(h.mean(3, keepdim=True), hh, 2))
    a_w = torch.sigmoid(att._pre(h.mean(2, keepdim=True), ww, 3))
    base = model.head(h * a_h * a_w)
    ablated = model.head(h * a_h.mean(2, keepdim=True) * a_w.mean(3, keepdim=True))
    expected = float((ablated - base).double().norm() / base.double().norm())
    effect = measure_effect(model, find_blocks(model, x[:2]), [x])["stage"]
    assert effect is not None and effect.positional is not None
    assert effect.positional.rel_l2 == pytest.approx(expected, rel=1e-4)


def test_labels_give_accuracy_and_its_drop() -> None:
    model = _constructed(pos=4.0, chan=1.0)
    x = _x(12)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # 9 of 12 right
    effect = measure_effect(model, find_blocks(model, x[:2]), [x[:5], x[5:]], labels=y)["stage"]
    assert effect is not None
    assert effect.accuracy == pytest.approx(9 / 12)
    with torch.no_grad():
        h = model.stem(x)
        att = model.stage
        _, _, hh, ww = h.shape
        a_h = torch.sigmoid(att._pre(h.mean(3, keepdim=True), hh, 2))
        a_w = torch.sigmoid(att._pre(h.mean(2, keepdim=True), ww, 3))
        # batch means: the first 5 samples, then the other 7
        parts = []
        for sl in (slice(0, 5), slice(5, 12)):
            parts.append(model.head(h[sl] * (a_h[sl].mean() * a_w[sl].mean())))
        ablated_acc = float((torch.cat(parts).argmax(1) == y).double().mean())
    assert effect.constant.accuracy_drop == pytest.approx(9 / 12 - ablated_acc)


def test_se_block_has_no_positional_measurement() -> None:
    torch.manual_seed(0)
    model = fx.Net(fx.SEBlock(16), c=16, stage=False).eval()
    effect = _effect(model, _x())["stage"]
    assert effect is not None
    assert effect.positional is None
    assert effect.constant.rel_l2 > 0


def test_every_family_is_measured() -> None:
    model = fx.all_families_net().eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    specs = find_blocks(model, x[:2])
    effects = measure_effect(model, specs, [x])
    assert set(effects) == {s.name for s in specs}
    for name, effect in effects.items():
        assert effect is not None, name
        assert math.isfinite(effect.constant.rel_l2)


def test_model_outputs_hooks_and_flags_unchanged() -> None:
    model = _constructed(pos=4.0)
    model.train()
    model.stage.eval()  # a mixed state, to be restored exactly
    flags = {n: m.training for n, m in model.named_modules()}
    x = _x()
    with torch.no_grad():
        model.eval()
        before = model(x)
        for n, m in model.named_modules():
            m.training = flags[n]
    measure_effect(model, find_blocks(model, x[:2]), [x])
    assert {n: m.training for n, m in model.named_modules()} == flags
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    with torch.no_grad():
        model.eval()
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_hooks_released_after_an_error() -> None:
    model = _constructed(pos=4.0)
    x = _x()
    with pytest.raises(Exception, match="classifier|class"):
        # labels for a model with 10 outputs holding class 12
        measure_effect(model, find_blocks(model, x[:2]), [x], labels=torch.full((6,), 12))
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_dead_weight_finding() -> None:
    th = Thresholds()

    def block(change: float | None) -> BlockReport:
        effect = None if change is None else MaskEffect(
            positional=None, constant=Ablation(rel_l2=change, top1_agreement=1.0,
                                               accuracy_drop=None),
            accuracy=None, samples=8)
        return BlockReport(name="b", type="T", kind="coordinate", feature=[8, 4, 4], masks={},
                           std_ratio=None, params=1, identity_path=False, weight_rms=None,
                           effect=effect)

    assert dead_weight(block(None), th) == []
    assert dead_weight(block(th.dead_weight_effect * 2), th) == []
    (f,) = dead_weight(block(th.dead_weight_effect / 2), th)
    assert f.code == "dead_weight" and f.severity == "warn"
    assert f.value == pytest.approx(th.dead_weight_effect / 2)
    assert f.threshold == th.dead_weight_effect


# --- the demo pair -------------------------------------------------------------------------------


def _demo(stem: str) -> Any:
    ckpt = torch.load(str(EXAMPLES / f"digits_{stem}.pt"), weights_only=True)
    model = digits_net()
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def test_demo_pair_collapsed_effect_far_below_healthy() -> None:
    x = torch.load(str(EXAMPLES / "digits_samples.pt"), weights_only=True)
    y = torch.load(str(EXAMPLES / "digits_labels.pt"), weights_only=True)
    out = {}
    for stem in ("healthy", "collapsed"):
        model = _demo(stem)
        specs = find_blocks(model, x[:2], pattern=r"stage[12]\.att")
        out[stem] = measure_effect(model, specs, [x[i:i + 32] for i in range(0, 128, 32)],
                                   labels=y)
    for name in ("stage1.att", "stage2.att"):
        healthy, collapsed = out["healthy"][name], out["collapsed"][name]
        assert healthy is not None and collapsed is not None
        assert collapsed.constant.rel_l2 < 0.5 * healthy.constant.rel_l2, name
        assert healthy.positional is not None and collapsed.positional is not None
        assert collapsed.positional.rel_l2 < 0.5 * healthy.positional.rel_l2, name
    assert out["healthy"]["stage1.att"].accuracy == pytest.approx(  # type: ignore[union-attr]
        float((_demo("healthy")(x).argmax(1) == y).double().mean()))


# --- CLI -----------------------------------------------------------------------------------------


def _inspect(runner, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["inspect", str(EXAMPLES / "digits_collapsed.pt"), "--model", DEMO,
                               "--tensors", str(EXAMPLES / "digits_samples.pt"),
                               "--batch-size", "64", *extra], catch_exceptions=False)


def test_cli_effect_with_labels(runner, validate_report) -> None:  # type: ignore[no-untyped-def]
    result = _inspect(runner, "--effect", "--labels", str(EXAMPLES / "digits_labels.pt"),
                      "--blocks", r"stage[12]\.att", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    validate_report(data)
    blocks = {b["name"]: b for b in data["blocks"]}
    assert set(blocks) == {"stage1.att", "stage2.att"}
    for b in blocks.values():
        effect = b["effect"]
        assert effect["samples"] == 128
        assert 0.9 < effect["accuracy"] <= 1.0
        assert effect["constant"]["rel_l2"] < 0.3
        assert effect["constant"]["accuracy_drop"] is not None
        assert effect["positional"]["top1_agreement"] is not None
    report = Report.from_dict(data)
    assert report.to_dict() == data
    limit = data["thresholds"]["dead_weight_effect"]
    for b in blocks.values():
        dead = [f for f in b["findings"] if f["code"] == "dead_weight"]
        assert bool(dead) == (b["effect"]["constant"]["rel_l2"] < limit)


def test_cli_dead_weight_with_a_configured_threshold(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "th.toml"
    config.write_text("dead_weight_effect = 0.5\n")
    result = _inspect(runner, "--effect", "--blocks", r"stage1\.att", "--config", str(config),
                      "--json", "-")
    assert result.exit_code == 0, result.output
    (block,) = json.loads(result.stdout)["blocks"]
    (finding,) = [f for f in block["findings"] if f["code"] == "dead_weight"]
    assert finding["threshold"] == 0.5
    assert finding["value"] == pytest.approx(block["effect"]["constant"]["rel_l2"])


def test_cli_effect_table_and_no_effect_without_the_option(runner) -> None:  # type: ignore[no-untyped-def]
    result = _inspect(runner, "--effect", "--blocks", r"stage1\.att")
    assert result.exit_code == 0, result.output
    assert "Mask effect" in result.stdout and "positional mean" in result.stdout
    plain = _inspect(runner, "--blocks", r"stage1\.att", "--json", "-")
    data = json.loads(plain.stdout)
    assert data["blocks"][0]["effect"] is None
    assert all(f["code"] != "dead_weight" for f in data["blocks"][0]["findings"])


def test_render_shows_effect_table() -> None:
    import io

    x = _x()
    from coordatt_diag.runs.inspect import analyze_model

    report = analyze_model(_constructed(pos=4.0), [x])
    effect = MaskEffect(positional=Ablation(0.25, 0.5, 0.125), constant=Ablation(0.5, 0.25, None),
                        accuracy=0.75, samples=6)
    import dataclasses

    report = dataclasses.replace(report, blocks=[dataclasses.replace(report.blocks[0],
                                                                     effect=effect)])
    buf = io.StringIO()
    render(report, make_console(buf, width=160))
    text = buf.getvalue()
    # an accuracy drop of 12.5% reads as a change of -12.5%
    assert "Mask effect" in text and "25.0%" in text and "-12.5%" in text


@pytest.mark.parametrize("kind", ["short", "float", "missing", "garbage", "2d", "npy_short"])
def test_cli_bad_labels_file(runner, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.pt"
    if kind == "short":
        torch.save(torch.arange(10), path)
    elif kind == "float":
        torch.save(torch.zeros(128), path)
    elif kind == "garbage":
        path.write_bytes(b"not a tensor file")
    elif kind == "2d":
        torch.save(torch.zeros(128, 2, dtype=torch.int64), path)
    elif kind == "npy_short":
        path = tmp_path / "labels.npy"
        np.save(path, np.arange(127))
    out = tmp_path / "report.json"
    result = _inspect(runner, "--effect", "--labels", str(path), "--json", str(out))
    assert result.exit_code == 3, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --labels"), result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_labels_needs_effect(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report.json"
    result = _inspect(runner, "--labels", str(EXAMPLES / "digits_labels.pt"), "--json", str(out))
    assert result.exit_code == 2, result.output
    assert "--effect" in result.stderr and not out.exists()


def test_cli_labels_too_many_classes(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.pt"
    torch.save(torch.full((128,), 10), path)
    result = _inspect(runner, "--effect", "--labels", str(path))
    assert result.exit_code == 3
    assert "class 10" in result.stderr


def test_labels_with_fewer_batches_are_cut(runner) -> None:  # type: ignore[no-untyped-def]
    result = _inspect(runner, "--effect", "--labels", str(EXAMPLES / "digits_labels.pt"),
                      "--batches", "1", "--blocks", r"stage1\.att", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["blocks"][0]["effect"]["samples"] == 64


def test_load_labels_accepts_npy(tmp_path: Path) -> None:
    path = tmp_path / "y.npy"
    np.save(path, np.array([1, 2, 3], dtype=np.int32))
    assert load_labels(path).tolist() == [1, 2, 3]
    assert load_labels(path).dtype == torch.int64
