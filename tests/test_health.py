"""Each finding is raised by a constructed case and not by a healthy one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordatt_diag import analyze_model
from coordatt_diag.errors import UsageError
from coordatt_diag.health.thresholds import ThresholdConfig, Thresholds, load_thresholds
from tests.fixtures.models import constructed_net

X = [torch.randn(4, 3, 12, 10, generator=torch.Generator().manual_seed(0))]

CASES = {
    "near_constant": dict(pos=0.01, chan=0.01),
    "pass_through": dict(bias=9.0),
    "suppression": dict(bias=-9.0),
    "dead_hard_gate": dict(pos=8.0, chan=0.0, gate="hardsigmoid"),
    "saturated": dict(pos=30.0, chan=0.0),
    "position_blind": dict(pos=0.0, chan=2.0),
    "nonfinite": dict(bias=float("nan")),
    "low_std_ratio": dict(bias=-3.0, beta=1.0, pos=0.5),
}


def _codes(**kwargs: object) -> dict[str, str]:
    report = analyze_model(constructed_net(**kwargs), X)  # type: ignore[arg-type]
    block = report.blocks[0]
    return {f.code: f.severity for f in block.findings}


@pytest.mark.parametrize("healthy", [dict(), dict(beta=0.5), dict(gate="hardsigmoid")])
def test_healthy_blocks_raise_nothing(healthy: dict[str, object]) -> None:
    assert _codes(**healthy) == {}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_finding_fires_on_its_case(code: str) -> None:
    assert code in _codes(**CASES[code])


def test_near_constant_severity_and_message() -> None:
    """Without --effect the std decides the fail level; the remedy is the collapse remedy and the
    finding links its docs section."""
    report = analyze_model(constructed_net(pos=0.001, chan=0.001), X)
    f = next(f for f in report.blocks[0].findings if f.code == "near_constant")
    assert f.severity == "fail" and f.threshold == 0.01 and f.value is not None and f.value < 0.01
    assert "sits at 0.50" in f.message and "weight RMS" in f.message and "weight decay" in f.remedy
    assert f.doc == "docs/remedies.md#near_constant"
    assert report.summary.status == "fail" and report.summary.fail == 1


def test_suppression_fail_above_quarter() -> None:
    assert _codes(bias=-9.0)["suppression"] == "fail"
    assert _codes(bias=-2.6, pos=2.0, chan=1.0).get("suppression") == "warn"


def test_identity_path_decides_the_std_ratio_floor() -> None:
    # the same masks: purely multiplicative gets no floor, with an identity path it does
    # (changed with the blend-aware floor: masks near 0 keep ~5 % of the removable signal)
    assert "low_std_ratio" not in _codes(bias=-3.0, pos=0.5)
    assert "low_std_ratio" in _codes(bias=-4.0, pos=0.5, beta=1.0)


def test_thresholds_from_toml_and_per_block(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('[tool.coordatt-diag]\nnear_constant_warn = 0.5\n'
                   '[tool.coordatt-diag.blocks."^stage$"]\nnear_constant_warn = 0.001\n'
                   'near_constant_fail = 0.0005\n')
    conf = load_thresholds(cfg)
    assert conf.default.near_constant_warn == 0.5
    assert conf.for_block("stage").near_constant_warn == 0.001
    assert conf.for_block("other").near_constant_warn == 0.5
    report = analyze_model(constructed_net(), X, thresholds=ThresholdConfig(default=Thresholds(
        near_constant_warn=0.9, near_constant_fail=0.0)))
    assert [f.code for f in report.blocks[0].findings] == ["near_constant", "near_constant"]


def test_pyproject_table_is_read(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.coordatt-diag]\nsuppression_warn = 0.2\n')
    assert load_thresholds(None, cwd=tmp_path).default.suppression_warn == 0.2
    assert load_thresholds(None, cwd=tmp_path / "nowhere").default == Thresholds()


@pytest.mark.parametrize("text", ['[tool.coordatt-diag]\nnope = 1\n', 'x = [',
                                  '[tool.coordatt-diag]\nsuppression_warn = "a"\n',
                                  '[tool.coordatt-diag.blocks."("]\nsuppression_warn = 1\n'])
def test_bad_config_is_a_usage_error(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError):
        load_thresholds(cfg)


# --- issue 19: saturation, per-kind levels, combined status, untrained, floors --------------------

import dataclasses  # noqa: E402
import re  # noqa: E402

from torch import nn  # noqa: E402

from coordatt_diag.blocks import CoordinateAtt  # noqa: E402
from coordatt_diag.health import rules  # noqa: E402
from coordatt_diag.results import (  # noqa: E402
    Ablation,
    BlockReport,
    MaskEffect,
    MaskStats,
    StdRatio,
    WeightInit,
)
from coordatt_diag.runs.inspect import scale_floor, weight_init  # noqa: E402
from tests.fixtures.models import CBAM, SEBlock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _mask(std: float = 0.1, mean: float = 0.5, low: float = 0.0, high: float = 0.0,
          exact: float = 0.0, sample_std: float | None = 0.05, pos_std: float | None = 0.05,
          shape: tuple[int, int, int] = (8, 4, 1)) -> MaskStats:
    return MaskStats(count=1000, min=0.0, max=1.0, mean=mean, std=std, sat_low=low, sat_high=high,
                     exact01=exact, nonfinite=0, pos_std=pos_std, chan_std=0.01,
                     hist=[0] * 64, shape=list(shape), sample_std=sample_std)


def _block(masks: dict[str, MaskStats], effect: float | MaskEffect | None = None,
           **kw: object) -> BlockReport:
    eff = effect if isinstance(effect, MaskEffect) or effect is None else MaskEffect(
        positional=None, constant=Ablation(rel_l2=effect, top1_agreement=None, accuracy_drop=None),
        accuracy=None, samples=100)
    fields = dict(name="b", type="T", kind="coordinate", feature=[8, 4, 4], masks=masks,
                  std_ratio=None, params=10, identity_path=False, weight_rms=0.1, effect=eff)
    fields.update(kw)
    return BlockReport(**fields)  # type: ignore[arg-type]


def _judged(block: BlockReport, th: Thresholds | None = None) -> dict[str, str]:
    b = rules.judge_block(block, th or Thresholds())
    return {f.code: f.severity for f in b.findings} | {"status": b.status}


def test_saturated_is_not_suppression_and_fails_only_when_uninformative() -> None:
    # pinned at 0 and 1 along positions: input-driven enough (positional std): warn
    codes = _codes(pos=30.0, chan=0.0)
    assert codes.get("saturated") == "warn" and "suppression" not in codes
    # each channel pinned at 0 or 1 whatever the input and position: no information: fail
    assert _codes(pos=0.0, chan=40.0).get("saturated") == "fail"
    m = _mask(std=0.45, low=0.4, high=0.5, sample_std=0.001, pos_std=0.001)
    assert _judged(_block({"a_h": m}))["saturated"] == "fail"
    # with --effect the effect decides: the masks do the model's work, so no fail
    assert _judged(_block({"a_h": m}, effect=0.8))["saturated"] == "warn"
    assert _judged(_block({"a_h": m}, effect=0.01))["saturated"] == "fail"


def test_sparse_suppression_fails_only_when_the_masks_carry_nothing() -> None:
    sparse = _mask(std=0.2, mean=0.1, low=0.8, sample_std=0.08)
    assert _judged(_block({"channel": sparse}, effect=0.9))["suppression"] == "warn"
    assert _judged(_block({"channel": sparse}, effect=0.001))["suppression"] == "fail"
    assert _judged(_block({"channel": sparse}))["suppression"] == "warn"


def test_dead_hard_gate_not_on_a_sigmoid_rounding_to_one() -> None:
    # a plain sigmoid of +30 is exactly 1.0 in float32: pass-through, not a dead hard gate
    codes = _codes(bias=30.0)
    assert "dead_hard_gate" not in codes and "pass_through" in codes
    assert "dead_hard_gate" in _codes(pos=8.0, chan=0.0, gate="hardsigmoid")


def test_near_constant_levels_per_mask_kind() -> None:
    th = Thresholds()
    between = (th.near_constant_channel_warn + th.near_constant_warn) / 2
    assert th.near_constant_channel_warn < th.near_constant_warn
    assert "near_constant" in _judged(_block({"a_h": _mask(std=between)}))
    assert "near_constant" not in _judged(_block({"channel": _mask(std=between)}))


def test_near_constant_fail_needs_the_effect_to_agree() -> None:
    flat = {"a_h": _mask(std=0.001)}
    assert _judged(_block(flat))["near_constant"] == "fail"
    assert _judged(_block(flat, effect=0.3))["near_constant"] == "warn"
    assert _judged(_block(flat, effect=0.001))["near_constant"] == "fail"


def test_branch_weights_collapsed_or_locked() -> None:
    """Branch weights (`select`): their mean is 1/branches whatever they do; a spread that is gone
    makes the block a fixed blend (near_constant), most weights at 0 or 1 a locked selection."""
    fixed = _mask(std=0.001, mean=0.5, shape=(16, 2, 1))
    assert _judged(_block({"select": fixed}, kind="select"))["near_constant"] == "fail"
    third = _mask(std=0.001, mean=1 / 3, shape=(16, 3, 1))
    assert "near_constant" in _judged(_block({"select": third}, kind="select"))
    soft = _mask(std=0.1, mean=0.5, low=0.001, high=0.001, shape=(16, 2, 1))
    assert _judged(_block({"select": soft}, kind="select")) == {"status": "ok"}
    locked = _mask(std=0.45, mean=0.5, low=0.3, high=0.3, shape=(16, 2, 1))
    judged = _judged(_block({"select": locked}, kind="select"))
    assert judged["branch_locked"] == "warn" and "saturated" not in judged
    th = Thresholds(branch_locked_share=0.7)
    assert "branch_locked" not in _judged(_block({"select": locked}, kind="select"), th)


def test_an_accuracy_cost_is_not_dead_weight() -> None:
    """With labels, masks whose replacement costs a point of accuracy matter, however small the
    change of the logits."""
    def block(drop: float | None) -> BlockReport:
        eff = MaskEffect(positional=None, constant=Ablation(
            rel_l2=0.03, top1_agreement=0.97, accuracy_drop=drop), accuracy=0.9, samples=400)
        return _block({"a_h": _mask(std=0.1)}, effect=0.03) if drop is None else \
            _block({"a_h": _mask(std=0.1)}, effect=eff)
    assert "dead_weight" in _judged(block(None))
    assert "dead_weight" in _judged(block(0.005))
    # 4 of 400 samples: 0.01 up to rounding of the two accuracies
    assert "dead_weight" not in _judged(block(0.8925 - 0.8825))
    assert "dead_weight" in _judged(block(0.8925 - 0.8825), Thresholds(dead_weight_accuracy=0))
    # a near-constant mask whose replacement costs accuracy does work: warn, not fail
    flat = {"a_h": _mask(std=0.001)}
    eff = MaskEffect(positional=None, constant=Ablation(rel_l2=0.01, top1_agreement=None,
                                                         accuracy_drop=0.02),
                     accuracy=0.9, samples=400)
    assert _judged(_block(flat, effect=eff))["near_constant"] == "warn"


def test_block_status_weighs_its_parts() -> None:
    """A CBAM whose spatial map passes most values while its channel map works is not warned."""
    masks = {"channel": _mask(std=0.2), "spatial": _mask(std=0.02, mean=0.99, high=0.72)}
    judged = rules.judge_block(_block(masks, effect=0.13, kind="cbam"), Thresholds())
    f = next(f for f in judged.findings if f.code == "pass_through")
    assert f.severity == "info" and "other masks (channel)" in f.message
    assert judged.status == "ok"
    # the same part alone in its block, or beside a broken part, still warns
    assert _judged(_block({"spatial": masks["spatial"]}, effect=0.13))["status"] == "warn"
    both = {"channel": _mask(std=0.2, low=0.9, mean=0.01), "spatial": masks["spatial"]}
    assert _judged(_block(both, effect=0.13))["pass_through"] == "warn"


def test_alpha_off_uses_the_magnitude() -> None:
    def block(alpha: float) -> BlockReport:
        return _block({"a_h": _mask()}, extra={"monitor": {"": {"alpha": alpha}}})

    assert "alpha_off" not in _judged(block(-0.7))  # scales the input by 1.7: not off
    assert "alpha_off" in _judged(block(0.01)) and "alpha_off" in _judged(block(-0.01))


def test_std_ratio_floor_follows_the_blend() -> None:
    """alpha 0.8, beta 0.5: the block cannot go below 0.6; a ratio of 0.62 keeps 5 % of what it
    can remove (warn), 0.7 keeps 25 % (no warning, where the old 0.45 floor measured nothing)."""
    def block(ratio: float, floor: float | None) -> BlockReport:
        return _block({"a_h": _mask()}, std_ratio=StdRatio(mean=ratio, min=ratio, batches=1),
                      identity_path=True, scale_floor=floor)

    assert "low_std_ratio" in _judged(block(0.62, 0.6))
    assert "low_std_ratio" not in _judged(block(0.70, 0.6))
    assert "low_std_ratio" not in _judged(block(0.62, None))
    assert "low_std_ratio" not in _judged(dataclasses.replace(block(0.05, None),
                                                              identity_path=False))
    assert scale_floor(CoordinateAtt(8, alpha=0.8, att_residual_beta=0.5)) == pytest.approx(0.6)
    assert scale_floor(CoordinateAtt(8)) == 0.0 and scale_floor(SEBlock(8)) is None


def test_weight_init_evidence() -> None:
    torch.manual_seed(0)
    block = CoordinateAtt(32)
    wi = weight_init(block)
    assert wi is not None and wi.at_init == wi.tensors == 3 and wi.values > 64
    shrunk = CoordinateAtt(32)
    with torch.no_grad():
        for p in shrunk.parameters():
            p.mul_(0.5)  # weight decay: inside the bound but far below the init's spread
    wi = weight_init(shrunk)
    assert wi is not None and wi.at_init == 0
    moved = CoordinateAtt(32)
    with torch.no_grad():
        moved.conv_h.weight[0, 0] = 2.0  # one value past 1/sqrt(fan_in)
    wi = weight_init(moved)
    assert wi is not None and wi.at_init == 2 and wi.max_bound_ratio is not None
    assert wi.max_bound_ratio > 1
    biased = CoordinateAtt(32)
    with torch.no_grad():
        biased.conv_w.bias.fill_(-6.0)  # a bias outside its init range: not at init
    wi = weight_init(biased)
    assert wi is not None and wi.at_init == 2
    assert weight_init(nn.Sigmoid()) is None
    # a norm layer's affine parameters start at exactly 1 and 0: moved ones mean training ran
    trained_norm = CoordinateAtt(32)
    norms = [m for m in trained_norm.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    with torch.no_grad():
        norms[0].weight[0] = 1.001
    wi = weight_init(trained_norm)
    assert wi is not None and wi.tensors == 4 and wi.at_init == 3
    gn = nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8))
    assert weight_init(gn).at_init == weight_init(gn).tensors == 1  # type: ignore[union-attr]
    with torch.no_grad():
        gn[1].bias[3] = -1e-4
    wi = weight_init(gn)
    assert wi is not None and wi.tensors == 2 and wi.at_init == 1


class _Holder(nn.Module):
    def __init__(self, att: nn.Module, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.att = att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.att(torch.relu(self.stem(x)))


@pytest.mark.parametrize("make", [lambda: CoordinateAtt(16), lambda: SEBlock(16),
                                  lambda: CBAM(16)], ids=["coordatt", "se", "cbam"])
def test_untrained_fires_for_every_family_and_never_on_a_collapsed_block(make: object) -> None:
    torch.manual_seed(1)
    fresh = make()  # type: ignore[operator]
    x = [torch.randn(8, 3, 12, 10, generator=torch.Generator().manual_seed(3))]
    block = analyze_model(_Holder(fresh), x).block("att")
    codes = {f.code: f for f in block.findings}
    assert "untrained" in codes and codes["untrained"].severity == "warn", codes
    assert "near_constant" not in codes and codes["untrained"].doc == "docs/remedies.md#untrained"
    collapsed = _Holder(fresh)
    with torch.no_grad():
        for p in collapsed.att.parameters():
            if p.dim() > 1:
                p.mul_(0.05)
    codes = {f.code: f for f in analyze_model(collapsed, x).block("att").findings}
    assert "untrained" not in codes, codes


def test_untrained_evidence_and_severity() -> None:
    wi = WeightInit(tensors=3, at_init=3, values=600, std_ratio=1.0, max_bound_ratio=0.99,
                    init="uniform(1/sqrt(fan_in))")
    masks = {"a_h": _mask(std=0.05), "a_w": _mask(std=0.05)}
    assert _judged(_block(masks, weight_init=wi))["untrained"] == "warn"
    # a lightly trained block fits its init too: the effect is reported, the severity stays warn
    judged = rules.judge_block(_block(masks, weight_init=wi, effect=0.4), Thresholds())
    (f,) = judged.findings
    assert f.severity == "warn" and "output depends on masks" in f.message
    judged = _judged(_block(masks, weight_init=wi, effect=0.001))
    assert judged["untrained"] == "warn" and "dead_weight" not in judged
    few = dataclasses.replace(wi, values=3)  # ECA's 3-tap conv: too few values to tell
    assert "untrained" not in _judged(_block(masks, weight_init=few))
    part = dataclasses.replace(wi, at_init=2)
    assert "untrained" not in _judged(_block(masks, weight_init=part))
    pinned = {"a_h": _mask(std=0.4, low=0.5, high=0.4)}
    assert "untrained" not in _judged(_block(pinned, weight_init=wi))


def test_every_finding_links_a_docs_section_with_a_plain_words_remedy() -> None:
    page = (ROOT / "docs" / "remedies.md").read_text()
    anchors = set(re.findall(r"^## `?([a-z_0-9]+)`?", page, flags=re.M))
    codes = set(rules.REMEDIES) | {"near_constant", "router_locked", "rescue_engaged",
                                   "temperature_at_bound", "scale_pinned", "alpha_off"}
    assert codes - {"collapsed"} <= anchors, codes - anchors
    for code, text in rules.REMEDIES.items():
        # the user's block numbering only as a cross-reference, in brackets after the words
        for m in re.finditer(r"add-on \d", text):
            before = text[:m.start()]
            assert before.count("(") > before.count(")"), (code, text)
        assert "seed" not in text, code


def test_every_threshold_is_in_the_thresholds_table() -> None:
    page = (ROOT / "docs" / "thresholds.md").read_text()  # the README links it
    missing = [f for f in Thresholds().to_dict() if f"`{f}`" not in page]
    assert not missing, missing
