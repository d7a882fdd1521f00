"""Finding blocks and capturing their masks, against masks recomputed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coordatt_diag import analyze_model
from coordatt_diag.capture.engine import MaskCapture, classify_mask, discover_blocks
from coordatt_diag.errors import NoBlocksError
from coordatt_diag.runs.inspect import find_blocks
from tests.fixtures import models as fx

ALL = sorted(fx.FAMILIES)


def _x(h: int = 12, w: int = 10, b: int = 3, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _net(family: str, stage: bool = True) -> nn.Module:
    torch.manual_seed(1)
    cls, _ = fx.FAMILIES[family]
    c = 16
    net = fx.Net(cls(2 * c if stage else c), c=c, stage=stage)
    _randomize_bn(net)
    return net.eval()


def _randomize_bn(net: nn.Module) -> None:
    # running stats away from (0, 1) so that BN matters in the hand computation
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _block_input(net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    module = dict(net.named_modules())[name]
    h = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        h.remove()
    return seen[0]


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("stage", [True, False])
def test_every_family_is_found_with_its_masks(family: str, stage: bool) -> None:
    net = _net(family, stage)
    specs = discover_blocks(net, _x())
    assert [s.name for s in specs] == ["stage.att" if stage else "stage"]
    assert specs[0].masks == fx.FAMILIES[family][1]


@pytest.mark.parametrize("family", ALL)
def test_statistics_equal_hand_computation(family: str, validate_report) -> None:  # type: ignore[no-untyped-def]
    net = _net(family)
    batches = [_x(seed=0), _x(seed=1, b=2)]
    report = analyze_model(net, batches)
    validate_report(report.to_dict())
    block = report.block("stage.att")
    module = dict(net.named_modules())["stage.att"]
    refs: dict[str, list[torch.Tensor]] = {}
    ratios, weights = [], []
    for x in batches:
        xin = _block_input(net, "stage.att", x)
        for k, v in module.reference_masks(xin).items():  # type: ignore[operator]
            refs.setdefault(k, []).append(v)
        with torch.no_grad():
            out = module(xin)
        r = out.flatten(1).std(1, correction=0).mean() / xin.flatten(1).std(1, correction=0).mean()
        ratios.append(float(r))
        weights.append(x.shape[0])
    assert set(block.masks) == set(refs)
    for name, parts in refs.items():
        c = xin.shape[1]
        flat = torch.cat([p.reshape(p.shape[0], -1) for p in parts]).double()
        stats = block.masks[name]
        assert stats.count == flat.numel()
        assert stats.mean == pytest.approx(float(flat.mean()), abs=1e-4)
        assert stats.std == pytest.approx(float(flat.std()), abs=1e-4)
        assert stats.min == pytest.approx(float(flat.min()), abs=1e-4)
        assert stats.max == pytest.approx(float(flat.max()), abs=1e-4)
        assert stats.sat_low == pytest.approx(float((flat <= 0.01).double().mean()), abs=1e-9)
        assert stats.sat_high == pytest.approx(float((flat >= 0.99).double().mean()), abs=1e-9)
        assert sum(stats.hist) == flat.numel()
        per_channel = torch.cat([p.reshape(p.shape[0], -1 if name == "spatial" else c, 1)
                                 if name == "channel" else p.reshape(p.shape[0], p.shape[1], -1)
                                 for p in parts]).double()
        if name != "channel":
            pos = per_channel.std(dim=2, correction=0).mean()
            assert stats.pos_std == pytest.approx(float(pos), abs=1e-4)
        if per_channel.shape[1] > 1:
            chan = per_channel.mean(dim=(0, 2)).std(correction=0)
            assert stats.chan_std == pytest.approx(float(chan), abs=1e-4)
    expected_ratio = sum(r * w for r, w in zip(ratios, weights, strict=True)) / sum(weights)
    assert block.std_ratio is not None
    assert block.std_ratio.mean == pytest.approx(expected_ratio, abs=1e-4)
    assert block.std_ratio.min == pytest.approx(min(ratios), abs=1e-4)


def test_one_batch_std_equals_seed_last_mask_stats() -> None:
    torch.manual_seed(0)
    block = fx.SeedCoordAtt(16).eval()
    x = _x(c=16)
    with torch.no_grad():
        y_h, y_w = block.mid(x)
        a_h = torch.sigmoid(block.conv_h(y_h))
    report = analyze_model(block, [x])
    assert report.blocks[0].name == ""
    assert report.blocks[0].masks["a_h"].std == pytest.approx(float(a_h.std()), abs=1e-6)


def test_cbam_parent_is_one_block_and_alpha_blend_has_identity_path() -> None:
    net = fx.all_families_net().eval()
    specs = discover_blocks(net, _x())
    by_name = {s.name: s for s in specs}
    assert by_name["8.att"].type == "CBAM" and by_name["8.att"].masks == ("channel", "spatial")
    assert by_name["10"].type == "AlphaBlend" and by_name["10"].identity_path
    assert not by_name["1.att"].identity_path  # purely multiplicative
    assert by_name["5.att"].identity_path  # 1 + beta * (att - 1)
    assert len(specs) == len(fx.FAMILIES) + 1


def test_swish_and_hswish_are_not_masks() -> None:
    with pytest.raises(NoBlocksError, match="blocks=.REGEX."):
        find_blocks(fx.plain_cnn().eval(), _x())


def test_square_maps_keep_width_mask_orientation() -> None:
    torch.manual_seed(0)
    block = fx.HandHardSigmoidCoordAtt(8).eval()
    x = torch.randn(2, 8, 9, 9)
    seen: dict[str, torch.Tensor] = {}
    specs = discover_blocks(block, x)
    with torch.inference_mode(), MaskCapture(block, specs,
                                             lambda call: seen.update(call.masks)):
        block(x)
    ref = block.reference_masks(x)
    torch.testing.assert_close(seen["a_h"], ref["a_h"])
    torch.testing.assert_close(seen["a_w"], ref["a_w"])


def test_hooks_removed_and_mode_restored_after_success_and_exception() -> None:
    net = _net("official")
    net.train()
    net.stage.att.eval()  # a mixed state must come back as it was
    before = {n: m.training for n, m in net.named_modules()}
    x = _x()
    specs = discover_blocks(net, x)

    def count_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())

    with torch.inference_mode(), MaskCapture(net, specs, lambda call: None):
        net(x)
    assert count_hooks() == 0
    assert {n: m.training for n, m in net.named_modules()} == before

    def boom(call: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), torch.inference_mode(), \
            MaskCapture(net, specs, boom):
        net(x)
    assert count_hooks() == 0
    assert {n: m.training for n, m in net.named_modules()} == before
    assert not torch._C._is_torch_function_mode_enabled()

    class Bad(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            raise ValueError("inside forward")

    net.stage.att.extra = Bad()  # type: ignore[assignment]
    orig = net.stage.att.forward

    def failing(t: torch.Tensor) -> torch.Tensor:
        orig(t)
        return net.stage.att.extra(t)

    net.stage.att.forward = failing  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="inside forward"), torch.inference_mode(), \
            MaskCapture(net, specs, lambda call: None):
        net(x)
    assert count_hooks() == 0
    assert not torch._C._is_torch_function_mode_enabled()


def test_outputs_unchanged_by_capture() -> None:
    net = _net("cbam")
    x = _x()
    with torch.no_grad():
        plain = net(x)
    report = analyze_model(net, [x])
    assert report.blocks
    with torch.no_grad():
        again = net(x)
    with torch.inference_mode(), MaskCapture(net, discover_blocks(net, x), lambda call: None):
        hooked = net(x)
    torch.testing.assert_close(plain, again, rtol=0, atol=0)
    torch.testing.assert_close(plain, hooked, rtol=0, atol=0)


def test_blocks_regex_restricts_and_names_missed_modules() -> None:
    net = fx.all_families_net().eval()
    specs = discover_blocks(net, _x(), pattern=r"^8\.")
    assert [s.name for s in specs] == ["8.att"]

    class TanhGate(nn.Module):
        """Attention the automatic search misses: the masked product is an einsum."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.norm = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = torch.sigmoid(self.conv(x.mean(3, keepdim=True)))
            return torch.einsum("bchw,bch->bchw", self.norm(x), g.squeeze(3))

    model = nn.Sequential(nn.Conv2d(3, 4, 1), TanhGate()).eval()
    assert discover_blocks(model, _x()) == []
    forced = discover_blocks(model, _x(), pattern=r"^1$")
    assert [(s.name, s.masks, s.forced) for s in forced] == [("1", ("a_h",), True)]
    report = analyze_model(model, [_x()], blocks_pattern=r"^1$")
    assert report.blocks[0].masks["a_h"].count == 3 * 4 * 12


@pytest.mark.parametrize(
    ("shape", "transposed", "kind"),
    [((2, 4, 6, 1), False, "a_h"), ((2, 4, 1, 5), False, "a_w"), ((2, 4, 5, 1), True, "a_w"),
     ((2, 4, 6, 5), False, "a_hw"), ((2, 4, 1, 1), False, "channel"), ((2, 4), False, "channel"),
     ((2, 1, 6, 5), False, "spatial"), ((2,), False, None), ((), False, None),
     ((1, 4, 6, 1), False, None)],
)
def test_classify_mask(shape: tuple[int, ...], transposed: bool, kind: str | None) -> None:
    assert classify_mask(torch.Size(shape), transposed, torch.Size((2, 4, 6, 5))) == kind


def test_shared_modules_do_not_break_the_search() -> None:
    # Ultralytics' Conv shares one nn.SiLU instance across every layer
    act = nn.SiLU()

    class Conv(nn.Module):
        default_act = act

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)
            self.act = self.default_act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x))

    torch.manual_seed(0)
    model = nn.Sequential(Conv(3, 8), fx.CBAM(8), Conv(8, 8), fx.OfficialCoordAtt(8)).eval()
    specs = discover_blocks(model, _x())
    assert [s.name for s in specs] == ["1", "3"]


def test_replace_swaps_a_mask_in_the_forward_pass() -> None:
    net = _net("official")
    x = _x()
    specs = discover_blocks(net, x)
    # gate 0 of the call is h_swish's relu6(x + 3) / 6, not a mask
    assert specs[0].mask_gates == (1, 2)
    seen: list[tuple[str, int]] = []

    def flat(block: str, ordinal: int, gate: torch.Tensor) -> torch.Tensor | None:
        seen.append((block, ordinal))
        return torch.ones_like(gate) if ordinal == 1 else None

    with torch.no_grad():
        base = net(x)
    with torch.inference_mode(), MaskCapture(net, specs, lambda call: None, replace=flat):
        out = net(x)
    assert seen == [("stage.att", 0), ("stage.att", 1), ("stage.att", 2)]
    assert not torch.allclose(out, base)
    # the same as a model whose a_h is 1
    att = net.stage.att
    with torch.no_grad():
        xin = _block_input(net, "stage.att", x)
        y_h, y_w = att.mid(xin)
        expect_att = xin * att.conv_w(y_w).sigmoid()
        h = net.stage.project(expect_att) + net.stem(x)
        torch.testing.assert_close(out, net.head(h))


def test_batch_of_one_does_not_take_a_gate_parameter_for_a_mask() -> None:
    class GatedParam(nn.Module):
        """A learned per-channel gate parameter next to a real SE mask."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.se = nn.Conv2d(c, c, 1)
            self.w = nn.Parameter(torch.zeros(1, c, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x * torch.sigmoid(self.se(x.mean((2, 3), keepdim=True)))
            return x * torch.sigmoid(self.w)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), GatedParam(4)).eval()
    report = analyze_model(model, [_x(b=1), _x(b=1, seed=2)])
    assert list(report.blocks[0].masks) == ["channel"]
    assert report.blocks[0].masks["channel"].count == 2 * 4


def test_std_ratio_uses_the_input_as_it_was_before_an_in_place_block() -> None:
    class InPlaceSE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.fc = nn.Conv2d(c, c, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True))))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), InPlaceSE(4)).eval()
    x = _x()
    with torch.no_grad():
        before = model[0](x)
        after = model[1](before.clone())
    expected = (after.flatten(1).std(1, correction=0).mean()
                / before.flatten(1).std(1, correction=0).mean())
    report = analyze_model(model, [x])
    assert report.blocks[0].std_ratio is not None
    assert report.blocks[0].std_ratio.mean == pytest.approx(float(expected), abs=1e-5)
