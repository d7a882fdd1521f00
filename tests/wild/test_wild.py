"""Attention modules as public code writes them: found, with the right block, kinds and exact
statistics; negatives clean; the `--blocks` fallback for every gate spelling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coordatt_diag import analyze_model
from coordatt_diag.capture.engine import MaskCapture, discover_blocks
from coordatt_diag.errors import NoBlocksError
from coordatt_diag.runs.inspect import find_blocks
from tests.wild import corpus as W

ROOT = Path(__file__).resolve().parents[2]


def test_corpus_spans_enough_modules_and_sources() -> None:
    assert len(W.CASES) >= 40
    assert len({c.id for c in W.CASES}) == len(W.CASES)
    repos = {c.source.split(" (")[0] for c in W.CASES}
    assert len(repos) >= 8


@pytest.mark.parametrize("size", W.SIZES, ids=[s[0] for s in W.SIZES])
@pytest.mark.parametrize("case", W.CASES, ids=[c.id for c in W.CASES])
def test_module_found_with_exact_masks(case: W.Case, size: tuple[str, int, int, int],
                                       validate_report) -> None:  # type: ignore[no-untyped-def]
    result = W.check(case, size, validate_report)
    assert result.problems == []
    assert result.found and result.exact


@pytest.mark.parametrize("size", W.SIZES, ids=[s[0] for s in W.SIZES])
@pytest.mark.parametrize("neg", W.NEGATIVES, ids=[n.id for n in W.NEGATIVES])
def test_negative_has_no_block(neg: W.Negative, size: tuple[str, int, int, int]) -> None:
    assert W.check_negative(neg, size) == []
    _, c, h, w = size
    with pytest.raises(NoBlocksError):
        find_blocks(W.build(neg, c), W.batches(h, w)[0])


def test_coverage_table_lists_every_family_and_module() -> None:
    text = (ROOT / "docs" / "coverage.md").read_text()
    n = len(W.SIZES)
    for case in W.CASES:
        assert case.id in text
    for fam in {c.family for c in W.CASES}:
        count = sum(c.family == fam for c in W.CASES) * n
        row = next(line for line in text.splitlines() if line.startswith(f"| {fam} |"))
        assert row.endswith(f"| {count}/{count} | {count}/{count} |"), row
    for neg in W.NEGATIVES:
        assert f"| {neg.id} |" in text and f"{n}/{n} |" in text


# --- `--blocks` fallback: gates whose product the search cannot follow (an einsum) -----------

def _gates() -> dict[str, nn.Module | object]:
    return {
        "nn.Sigmoid": nn.Sigmoid(),
        "torch.sigmoid": torch.sigmoid,
        ".sigmoid()": lambda t: t.sigmoid(),
        "F.hardsigmoid": F.hardsigmoid,
        "nn.Hardsigmoid": nn.Hardsigmoid(),
        "relu6(x + 3) / 6": lambda t: F.relu6(t + 3) / 6,
        "clamp(x, 0, 1)": lambda t: torch.clamp(t / 6 + 0.5, 0, 1),
    }


class EinsumGate(nn.Module):
    """An a_h gate applied with an einsum: found only when named with `--blocks`."""

    def __init__(self, c: int, gate: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.gate = gate if isinstance(gate, nn.Module) else None
        self.fn = None if isinstance(gate, nn.Module) else gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x.mean(3, keepdim=True)) * 3
        g = self.gate(z) if self.gate is not None else self.fn(z)  # type: ignore[misc]
        return torch.einsum("bchw,bch->bchw", x, g.squeeze(3))


@pytest.mark.parametrize("spelling", list(_gates()))
def test_blocks_fallback_takes_every_gate_spelling(spelling: str) -> None:
    torch.manual_seed(0)
    c = 6
    block = EinsumGate(c, _gates()[spelling])
    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), block).eval()
    x = W.batches(8, 8)[0]
    assert discover_blocks(model, x) == []
    specs = discover_blocks(model, x, pattern=r"^1$")
    assert [(s.name, s.masks, s.forced) for s in specs] == [("1", ("a_h",), True)]
    seen: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), MaskCapture(model, specs, lambda call: seen.update(call.masks)):
        model(x)
    with torch.no_grad():
        xin = model[0](x)
        z = block.conv(xin.mean(3, keepdim=True)) * 3
        g = block.gate(z) if block.gate is not None else block.fn(z)  # type: ignore[misc]
    torch.testing.assert_close(seen["a_h"], g)
    report = analyze_model(model, [x], blocks_pattern=r"^1$")
    assert report.blocks[0].extra.get("forced") is True  # marked so in the report
    stats = report.blocks[0].masks["a_h"]
    assert stats.count == g.numel()
    assert stats.mean == pytest.approx(float(g.double().mean()), abs=1e-4)
    assert stats.std == pytest.approx(float(g.double().std()), abs=1e-4)


def test_blocks_fallback_names_a_bare_sigmoid_module() -> None:
    """`--blocks` naming the nn.Sigmoid itself: its own output is its mask, not an activation."""
    torch.manual_seed(0)
    c = 4

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, 1, 3, padding=1)
            self.sig = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,bhw->bchw", x, self.sig(self.conv(x)).squeeze(1))

    model = nn.Sequential(nn.Conv2d(3, c, 1), Inner()).eval()
    x = W.batches(6, 7)[0]
    specs = discover_blocks(model, x, pattern=r"^1\.sig$")
    assert [(s.name, s.masks, s.forced) for s in specs] == [("1.sig", ("a_hw",), True)]


def test_forced_and_found_blocks_keep_capture_exact_at_another_input_size() -> None:
    """Masks whose H/W follow the input are read at the size of each batch."""
    case = next(c for c in W.CASES if c.id == "coordatt")
    net = W.build(case, 16)
    specs = discover_blocks(net, W.batches(12, 10)[0])
    x = W.batches(14, 9)[1]
    seen: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), MaskCapture(net, specs, lambda call: seen.update(call.masks)):
        net(x)
    args, _ = W.block_inputs(net, "att", x)
    with torch.no_grad():
        ref = case.ref(net.att, *args)
    for k, v in ref.items():
        torch.testing.assert_close(seen[k], v)


def test_report_names_the_parts_of_a_residual_cbam_block(validate_report) -> None:  # type: ignore[no-untyped-def]
    case = next(c for c in W.CASES if c.id == "luuuyi_resnet_cbam")
    net = W.build(case, 16)
    report = analyze_model(net, W.batches(12, 10))
    validate_report(report.to_dict())
    block = report.block("att")
    assert block.kind == "cbam" and block.identity_path
    assert block.extra["parts"] == {"channel": "ca", "spatial": "sa"}
    assert "forced" not in block.extra


def test_stage_holding_attention_and_convs_is_not_one_block() -> None:
    """An inverted residual whose only child is a Sequential (conv, CoordAtt, conv), and a ResNet
    layer of two CBAM residual blocks: the blocks are the attention module and each residual
    block, not the stage around them."""
    from tests.wild import modules_b as B

    class InvertedResidual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(c, c, 1), B.CoordAtt(c), nn.Conv2d(c, c, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x)

    torch.manual_seed(0)
    x = W.batches(12, 10)[0]
    model = nn.Sequential(nn.Conv2d(3, 8, 1), InvertedResidual(8)).eval()
    assert [s.name for s in discover_blocks(model, x)] == ["1.conv.1"]
    layer = nn.Sequential(nn.Conv2d(3, 8, 1),
                          nn.Sequential(B.CBAMBasicBlock(8), B.CBAMBasicBlock(8))).eval()
    specs = discover_blocks(layer, x)
    assert [(s.name, s.masks) for s in specs] == [("1.0", ("channel", "spatial")),
                                                   ("1.1", ("channel", "spatial"))]
