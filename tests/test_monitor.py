"""The seed blocks' monitor in `inspect`: values, streamed router / clamp shares, findings."""

from __future__ import annotations

import copy
import json
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coordatt_diag import analyze_model
from coordatt_diag.blocks import (
    CBAMChannelPlusCoord,
    ChannelAttentionFusionT,
    CoordinateAtt,
    CoordinateAttPlus,
)
from coordatt_diag.blocks.cbam_coord import softplus_inverse
from coordatt_diag.cli import app
from coordatt_diag.errors import InputError
from coordatt_diag.health.thresholds import ThresholdConfig
from coordatt_diag.results import CheckpointInfo, InputsInfo, Report
from coordatt_diag.runs.inspect import finalize, run_batches
from coordatt_diag.stats.monitor import (
    ClampAccumulator,
    MonitorPart,
    RouterAccumulator,
    rescue,
    temperature,
)
from tests.nested import assert_close
from tests.seed_code import seed000
from tests.seed_code import seed001_step2 as seed001

C = 16
MONITOR_CODES = {"router_locked", "rescue_engaged", "temperature_at_bound", "scale_pinned",
                 "alpha_off", "untrained"}


def _batches(n: int = 3, seed: int = 0, shape: tuple[int, ...] = (4, 3, 12, 10)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


class Holder(nn.Module):
    """A stem conv, then the block (its first output when it returns a tuple)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.att = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.att(self.stem(x))
        return out[0] if isinstance(out, tuple) else out


def _trained_heads(block: nn.Module, std: float = 0.5, seed: int = 1) -> nn.Module:
    """Heads re-drawn far from their init, so the masks vary (a block that has learned)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in block.named_modules():
            if name.endswith(("h_attention_head", "w_attention_head")):
                assert isinstance(m, nn.Conv2d)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
    return block


def blocks_net() -> nn.Module:
    """One of each block type (a factory for the CLI test)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1),
        _Wrap(CoordinateAtt(C, per_axis_alpha=True, att_residual_beta=0.5, learnable_alpha=True)),
        _Wrap(ChannelAttentionFusionT(C)),
        _Wrap(CoordinateAttPlus(C)),
        _Wrap(CBAMChannelPlusCoord(C, monitor=True)),
    )
    return net


class _Wrap(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.att = block
        self.conv = nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.att(x)
        return self.conv(out[0] if isinstance(out, tuple) else out)


def _monitor(report: Report, name: str = "att") -> dict[str, Any]:
    return report.block(name).extra["monitor"]


# ---------------------------------------------------------------------------------------------
# Values


def test_each_block_type_reports_its_monitor(validate_report) -> None:  # type: ignore[no-untyped-def]
    model = blocks_net()
    report = analyze_model(model, _batches())
    data = report.to_dict()
    validate_report(data)
    assert Report.from_dict(json.loads(json.dumps(data))) == report
    names = [b.name for b in report.blocks]
    assert names == ["1.att", "2.att", "3.att", "4.att"]

    ca0 = _monitor(report, "1.att")[""]
    assert ca0["type"] == "CoordinateAtt"
    assert ca0["alpha_h"] == ca0["alpha_w"] == 1.0 and ca0["beta"] == 0.5
    head = typing.cast(CoordinateAtt, model[1].att).conv_h.weight.detach()  # type: ignore[index]
    assert ca0["head_std"]["a_h"] == pytest.approx(float(head.std()))
    assert ca0["head_init_std"] == pytest.approx((3 * head[0].numel()) ** -0.5)

    cat = _monitor(report, "2.att")[""]
    assert cat["T"] == pytest.approx(0.9) and cat["T_raw"] == pytest.approx(0.9)
    assert (cat["t_min"], cat["t_max"], cat["beta_ca"], cat["router_temperature"]) == (
        0.5, 3.0, 0.35, 1.5)
    assert cat["router"]["samples"] == 12  # 3 batches of 4
    assert cat["router"]["mean"] == pytest.approx([0.5, 0.5])  # zero-initialised router

    plus = _monitor(report, "3.att")[""]
    assert plus["alpha_h"] == pytest.approx(0.7) and plus["alpha_w"] == pytest.approx(0.7)
    assert (plus["beta"], plus["scale_min"], plus["scale_max"]) == (0.35, 0.6, 1.6)
    assert plus["scale_clamp"]["count"] == 3 * 4 * C * 12 * 10
    assert "head_init_std" not in plus  # seed 001 heads: the 0.01 of the thresholds

    # one CBAMChannelPlusCoord is one block: the fusion router's branch weights (select),
    # channel, a_h, a_w; its monitor has three parts
    cbam = report.block("4.att")
    assert list(cbam.masks) == ["select", "channel", "a_h", "a_w"]
    parts = _monitor(report, "4.att")
    assert set(parts) == {"", "ca", "coord"}
    assert parts[""]["alpha"] == pytest.approx(0.75) and parts[""]["r_ema"] == 1.0
    assert parts[""]["alpha_eff"] == pytest.approx(0.75) and parts[""]["rescue_mode"] == "ratio_floor"
    assert parts[""]["monitor"] is True
    assert "router" in parts["ca"] and "scale_clamp" in parts["coord"]


def test_channel_mask_is_the_ca_map() -> None:
    """`channel` is the block's `ca` (B,C,1,1), gathered by hand with return_maps."""
    block = _trained_heads(CBAMChannelPlusCoord(C, return_maps=True))
    model = Holder(block)
    batches = _batches()
    report = analyze_model(model, batches)
    with torch.no_grad():
        cas = torch.cat([block(model.stem(b))[1] for b in batches])
    m = report.block("att").masks["channel"]
    assert m.count == cas.numel()
    assert m.mean == pytest.approx(float(cas.mean()), abs=1e-6)
    assert m.std == pytest.approx(float(cas.std()), rel=1e-4)


def test_router_shares_match_hand_computation() -> None:
    ca = ChannelAttentionFusionT(C)
    with torch.no_grad():  # a router that has learned something
        for p in ca.fusion_router.parameters():  # type: ignore[union-attr]
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    model = Holder(ca)
    batches = _batches(4)
    report = analyze_model(model, batches)
    hand = copy.deepcopy(ca)
    hand.return_fusion_weights = True
    with torch.no_grad():
        w = torch.cat([hand(model.stem(b))[2] for b in batches])  # type: ignore[misc]
    router = _monitor(report)[""]["router"]
    assert router["samples"] == w.shape[0]
    assert router["mean"] == pytest.approx(w.mean(0).tolist(), abs=1e-6)
    assert router["max"] == pytest.approx(w.amax(0).tolist(), abs=1e-6)
    assert min(router["max"]) > 0.05 and max(router["mean"]) < 0.95  # not trivially uniform


def test_clamp_shares_match_hand_computation() -> None:
    """The share at each bound, counted from out / x of the block (positive inputs)."""
    # with masks <= 1 the scale never exceeds 1: a scale_max below 1 exercises the upper bound
    coord = _trained_heads(CoordinateAttPlus(C, beta=1.0, scale_min=0.3, scale_max=0.9), std=2.0)
    batches = [torch.rand(4, C, 10, 12, generator=torch.Generator().manual_seed(i)) + 0.5
               for i in range(3)]
    report = analyze_model(coord, batches)  # the block is the model itself
    with torch.no_grad():
        ratio = torch.cat([(coord(b) / b).flatten() for b in batches])
    at_min = float((ratio - 0.3).abs().lt(1e-5).double().mean())
    at_max = float((ratio - 0.9).abs().lt(1e-5).double().mean())
    clamp = _monitor(report, "")[""]["scale_clamp"]
    assert clamp["count"] == ratio.numel()
    assert clamp["at_min"] == pytest.approx(at_min, abs=1e-9)
    assert clamp["at_max"] == pytest.approx(at_max, abs=1e-9)
    assert at_min > 0.01 and at_max > 0.01  # both bounds are exercised


@pytest.mark.parametrize("mode", ["ratio_floor", "alpha_floor"])
@pytest.mark.parametrize("r_start", [0.05, 0.3, 2.0])
def test_rescue_arithmetic_matches_the_seed(mode: str, r_start: float) -> None:
    """After training-mode forwards of the seed's own class, our reading of its buffers gives
    the r_ema and alpha_eff its `monitor_stats` reported."""
    torch.manual_seed(0)
    block = seed001.CBAMChannelPlusCoord(C, monitor=True, return_maps=True, rescue_mode=mode,
                                         alpha_init=0.6, learnable_alpha=True).train()
    with torch.no_grad():
        block.r_ema.fill_(r_start)  # type: ignore[operator]
    for i in range(3):
        *_, stats = block(torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(i)))
    ours = rescue(block)
    assert ours is not None and stats is not None
    assert ours["rescue_mode"] == stats["rescue_mode"] == mode
    assert ours["r_ema"] == pytest.approx(stats["r_ema"], abs=1e-7)
    assert ours["alpha"] == pytest.approx(stats["alpha"], abs=1e-6)
    assert ours["alpha_eff"] == pytest.approx(stats["alpha_eff"], abs=1e-6)
    # and the hand formula of NOTES.md
    ratio = min(max(stats["r_ema"] / 0.45, 0.0), 1.0)
    hand = (0.6 * min(max(ratio, 0.2), 1.0) if mode == "ratio_floor"
            else min(max(0.6 * ratio, 0.2), 1.0))
    assert ours["alpha_eff"] == pytest.approx(hand, abs=1e-6)
    assert (ours["alpha_eff"] < ours["alpha"]) == (stats["r_ema"] < 0.45)


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("t", [0.2, 0.9, 5.0])
def test_temperature_is_get_t(learnable: bool, t: float) -> None:
    ca = seed001.ChannelAttentionFusionT(C, learnable_temperature=learnable)
    with torch.no_grad():
        if learnable:
            ca.t_raw.copy_(softplus_inverse(torch.tensor(t)))
        else:
            ca.T.fill_(t)  # type: ignore[operator]
    got = temperature(ca)
    assert got is not None
    assert got[1] == pytest.approx(float(ca.get_T(torch.zeros(1)).detach()), abs=1e-6)
    assert got[0] == pytest.approx(t, abs=1e-5)


def test_users_copy_of_the_seed_classes_reads_the_same() -> None:
    """The notebook's own classes (found by their names, not by class) give the same monitor."""
    torch.manual_seed(0)
    theirs = seed001.CBAMChannelPlusCoord(C, monitor=True)
    ours = CBAMChannelPlusCoord(C, monitor=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        theirs.r_ema.fill_(0.3)  # type: ignore[operator]
        ours.r_ema.fill_(0.3)
    a, b = Holder(theirs), Holder(ours)
    b.stem.load_state_dict(a.stem.state_dict())
    batches = _batches()
    ma, mb = _monitor(analyze_model(a, batches)), _monitor(analyze_model(b, batches))
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)

    add4 = seed000.CoordinateAttAddon4(C, alpha=0.3, learnable_alpha=True)
    part = _monitor(analyze_model(Holder(add4), batches))[""]
    assert part["alpha_h"] == pytest.approx(0.3) and part["alpha_w"] == pytest.approx(0.3)
    add6 = seed000.CoordinateAttAddon6(C)
    assert _monitor(analyze_model(Holder(add6), batches))[""]["beta"] == 0.5


# ---------------------------------------------------------------------------------------------
# Streaming: merge, device, hooks


def test_accumulators_merge_to_the_whole_run() -> None:
    g = torch.Generator().manual_seed(0)
    shares = [torch.softmax(torch.randn(5, 2, generator=g), 1) for _ in range(4)]
    whole, a, b = RouterAccumulator(), RouterAccumulator(), RouterAccumulator()
    for i, w in enumerate(shares):
        whole.update(w)
        (a if i < 2 else b).update(w)
    a.merge(b)
    a.merge(RouterAccumulator())
    assert_close(a.finalize(), whole.finalize())
    assert RouterAccumulator().finalize() is None

    scales = [torch.rand(3, 4, 5, generator=g) * 2 for _ in range(4)]
    cw, ca_, cb = ClampAccumulator(), ClampAccumulator(), ClampAccumulator()
    for i, s in enumerate(scales):
        cw.update(s, 0.6, 1.6)
        (ca_ if i < 2 else cb).update(s, 0.6, 1.6)
    ca_.merge(cb)
    assert ca_.finalize() == cw.finalize()
    allv = torch.cat([s.flatten() for s in scales])
    done = cw.finalize()
    assert done is not None and done["at_min"] == float((allv <= 0.6).double().mean())


def test_run_states_of_two_shards_merge_to_the_whole_run() -> None:
    model = Holder(_trained_heads(CBAMChannelPlusCoord(C, coord_beta=1.0), std=2.0))
    batches = _batches(4)
    whole = run_batches(model, batches)
    first, second = run_batches(model, batches[:2]), run_batches(model, batches[2:])
    with torch.inference_mode():  # the mask accumulators update inference tensors in place
        first.merge(second)
    args = (ThresholdConfig(), CheckpointInfo(path=None, sha256=None, format="in-memory"),
            InputsInfo(source="tensors", path=None, samples=16, batches=4, batch_size=4,
                       shape=[3, 12, 10]))
    mw = finalize(model, whole, *args).block("att").extra["monitor"]
    mm = finalize(model, first, *args).block("att").extra["monitor"]
    assert_close(mm["ca"]["router"], mw["ca"]["router"])
    assert_close(mm["coord"]["scale_clamp"], mw["coord"]["scale_clamp"])


def test_streamed_statistics_stay_on_the_model_device() -> None:
    model = Holder(CBAMChannelPlusCoord(C))
    state = run_batches(model, _batches(2))
    obs = state.observers[0]
    tensors = [t for acc in obs.routers.values() for t in (acc.total, acc.high)]  # type: ignore[attr-defined]
    tensors += [acc.bounds for acc in obs.clamps.values()]  # type: ignore[attr-defined]
    assert tensors and all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors)


class _Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Holder(CBAMChannelPlusCoord(C))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        if self.calls > 2:  # after discovery and the first batch
            raise RuntimeError("boom")
        return out


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hook_is_left_after_a_run_or_an_exception() -> None:
    model = Holder(CBAMChannelPlusCoord(C))
    analyze_model(model, _batches(2))
    assert _hooks(model) == 0
    boom = _Boom()
    with pytest.raises(InputError):
        analyze_model(boom, _batches(3))
    assert _hooks(boom) == 0


# ---------------------------------------------------------------------------------------------
# Findings


def _healthy_cbam(**kwargs: Any) -> CBAMChannelPlusCoord:
    return typing.cast(CBAMChannelPlusCoord, _trained_heads(CBAMChannelPlusCoord(C, monitor=True,
                                                                                 **kwargs)))


def _locked(b: CBAMChannelPlusCoord) -> None:
    last = typing.cast(nn.Conv2d, b.ca.fusion_router[-1])  # type: ignore[index]
    last.bias.copy_(torch.tensor([8.0, -8.0]))  # type: ignore[union-attr]


def _rescued(b: CBAMChannelPlusCoord) -> None:
    b.r_ema.fill_(0.3)


def _t_at_bound(b: CBAMChannelPlusCoord) -> None:
    b.ca.T.fill_(0.5)


def _pinned(b: CBAMChannelPlusCoord) -> None:
    b.coord.beta = 1.0
    for head in (b.coord.h_attention_head, b.coord.w_attention_head):
        head.bias.fill_(-10.0)  # type: ignore[union-attr]  # hard sigmoid 0: scale (1 - 0.7)^2 = 0.09, clamped to 0.6


def _off(b: CBAMChannelPlusCoord) -> None:
    b.coord.alpha_h_raw.fill_(-10.0)


def _untrained(b: CBAMChannelPlusCoord) -> None:
    for head in (b.coord.h_attention_head, b.coord.w_attention_head):
        head.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(2))


CASES = {"router_locked": _locked, "rescue_engaged": _rescued,
         "temperature_at_bound": _t_at_bound, "scale_pinned": _pinned, "alpha_off": _off,
         "untrained": _untrained}


def _codes(block: nn.Module, batches: list[torch.Tensor] | None = None) -> dict[str, list[Any]]:
    report = analyze_model(Holder(block), batches or _batches())
    out: dict[str, list[Any]] = {}
    for f in report.block("att").findings:
        out.setdefault(f.code, []).append(f)
    return out


def test_healthy_seed_block_raises_none_of_them() -> None:
    codes = _codes(_healthy_cbam())
    assert not set(codes) & MONITOR_CODES, codes


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_finding_fires_on_its_case(code: str) -> None:
    block = _healthy_cbam()
    with torch.no_grad():
        CASES[code](block)
    codes = _codes(block)
    assert code in codes, codes
    others = set(codes) & MONITOR_CODES - {code}
    if code != "scale_pinned":  # a pinned scale also flattens the masks it is made of
        assert not others, others
    f = codes[code][0]
    assert f.severity == "warn" and f.remedy and f.message


def test_finding_messages_carry_the_evidence() -> None:
    block = _healthy_cbam(rescue_mode="alpha_floor")
    with torch.no_grad():
        _rescued(block)
        _locked(block)
        _pinned(block)
    codes = _codes(block)
    rescue_f = codes["rescue_engaged"][0]
    assert rescue_f.value == pytest.approx(0.3) and rescue_f.threshold == 0.45
    # alpha_floor: clamp(0.75 * 0.3 / 0.45, 0.2, 1) = 0.5
    assert "alpha_floor" in rescue_f.message and "alpha_eff 0.500" in rescue_f.message
    lock = codes["router_locked"][0]
    assert "avg-pooled" in lock.message and lock.value is not None and lock.value > 0.99
    assert lock.threshold == 0.95
    pin = codes["scale_pinned"][0]
    assert pin.value == pytest.approx(1.0) and "scale_min" in pin.message
    assert pin.message.startswith("coord: ")


def test_learnable_temperature_past_its_clamp() -> None:
    block = _healthy_cbam(learnable_temperature=True)
    assert "temperature_at_bound" not in _codes(copy.deepcopy(block))
    with torch.no_grad():
        block.ca.t_raw.copy_(softplus_inverse(torch.tensor(5.0)))
    f = _codes(block)["temperature_at_bound"][0]
    assert f.value == pytest.approx(5.0, abs=1e-4) and f.threshold == 3.0
    assert "t_max" in f.message and "learnable" in f.message


def test_untrained_not_collapsed_and_collapsed_not_untrained() -> None:
    """Heads at their 0.01 init: untrained; the same heads shrunk 100-fold: collapsed."""
    fresh = CBAMChannelPlusCoord(C)
    codes = _codes(fresh)
    assert "untrained" in codes and "near_constant" not in codes
    # the evidence is every weight tensor at its init (issue 19), the heads' declared normal(0.01)
    assert "all 14 weight tensors" in codes["untrained"][0].message
    assert "normal(0.01)" in codes["untrained"][0].message
    collapsed = copy.deepcopy(fresh)
    with torch.no_grad():
        for head in (collapsed.coord.h_attention_head, collapsed.coord.w_attention_head):
            head.weight.mul_(0.01)
    codes = _codes(collapsed)
    assert "near_constant" in codes and "untrained" not in codes


def test_alpha_off_on_a_seed000_block() -> None:
    block = CoordinateAtt(C, alpha=0.01, learnable_alpha=True)
    assert [f.message for f in _codes(block)["alpha_off"]] == [
        "alpha 0.0100, |alpha| < 0.05: the block switched itself off (its scale is ~1, the "
        "output ~ its input)"]
    # the magnitude decides (issue 19): a negative alpha scales the input up, it is not off
    assert "alpha_off" not in _codes(CoordinateAtt(C, alpha=-0.7, learnable_alpha=True))
    assert "alpha_off" not in _codes(CoordinateAtt(C, alpha=0.5, learnable_alpha=True))


def test_rejudging_a_report_read_back_from_json_gives_the_same_findings() -> None:
    from coordatt_diag.health.rules import judge

    block = _healthy_cbam()
    with torch.no_grad():
        _locked(block)
        _rescued(block)
    report = analyze_model(Holder(block), _batches())
    back = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert judge(back, ThresholdConfig()).blocks == report.blocks


# ---------------------------------------------------------------------------------------------
# Schema, CLI, renderers


def test_schema_lists_every_monitor_entry() -> None:
    text = resources.files("coordatt_diag").joinpath("schema/report.schema.json").read_text()
    props = json.loads(text)["$defs"]["monitor_part"]["properties"]
    assert set(props) == set(typing.get_type_hints(MonitorPart))


def test_inspect_cli_shows_the_monitor(runner, tmp_path: Path, validate_report) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "blocks.pt"
    torch.save({"state_dict": blocks_net().state_dict()}, path)
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["inspect", str(path), "--model", "tests.test_monitor:blocks_net",
                                 "--imgsz", "16", "--batches", "1", "--json", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Block internals" in result.stdout
    assert "r_ema 1.000 (r_min 0.45, ratio_floor, monitor on) -> alpha_eff 0.750" in result.stdout
    assert "[untrained]" in result.stdout
    data = json.loads(out.read_text())
    validate_report(data)
    assert data["blocks"][3]["extra"]["monitor"]["ca"]["router"]["samples"] == 8


def test_markdown_and_html_show_the_monitor() -> None:
    from coordatt_diag.reports.html_report import _block_section
    from coordatt_diag.reports.markdown_report import _block

    report = analyze_model(Holder(CBAMChannelPlusCoord(C, monitor=True)), _batches(1))
    b = report.block("att")
    md = "\n".join(_block(1, b, [], "plots")).replace("\\_", "_")
    html = "\n".join(_block_section(1, b, []))
    for text in (md, html):
        assert "monitor" in text and "alpha_eff 0.750" in text and "router mean share" in text


def test_hard_sigmoid_reference_of_the_pinned_case() -> None:
    """The constructed pinned case is what the comment says: masks 0, scale 0.09 before the clamp."""
    assert float(F.hardsigmoid(torch.tensor(-10.0))) == 0.0
    assert (1 - 0.7) ** 2 < 0.6
