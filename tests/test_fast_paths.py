"""The per-batch fast paths: gate-site hooks, the functional fallback, reused input moments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coordatt_diag.runs import inspect as runs_inspect
from coordatt_diag.runs.inspect import run_batches


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class _Chain(nn.Module):
    """Two SE blocks back to back, with an in-place activation between them or not."""

    def __init__(self, inplace_between: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = _SE(8)
        self.mid = nn.ReLU(inplace=True) if inplace_between else nn.Identity()
        self.b = _SE(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.mid(self.a(self.stem(x))))


def _hand_ratio(net: nn.Module, name: str, xs: list[torch.Tensor]) -> float:
    """Sample-weighted mean over batches of mean_i std(out_i) / mean_i std(x_i)."""
    ratios, sizes = [], []
    module = dict(net.named_modules())[name]
    seen: dict[str, torch.Tensor] = {}
    pre = module.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("x", a[0].detach().double().clone()))
    post = module.register_forward_hook(
        lambda m, a, o: seen.__setitem__("out", o.detach().double().clone()))
    try:
        with torch.no_grad():
            for x in xs:
                net(x)
                sx = seen["x"].flatten(1).std(1, correction=0).mean()
                so = seen["out"].flatten(1).std(1, correction=0).mean()
                ratios.append(float(so / sx))
                sizes.append(x.shape[0])
    finally:
        pre.remove()
        post.remove()
    return sum(r * s for r, s in zip(ratios, sizes, strict=True)) / sum(sizes)


@pytest.mark.parametrize("inplace_between", [False, True])
@pytest.mark.parametrize("inference", [True, False])
def test_input_moments_reused_only_for_the_unchanged_previous_output(
        monkeypatch: pytest.MonkeyPatch, inplace_between: bool, inference: bool) -> None:
    torch.manual_seed(0)
    net = _Chain(inplace_between).eval()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(4, 3, 9, 9, generator=gen) for _ in range(3)]
    calls = []
    real = runs_inspect.sample_moments

    def counting(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return real(t)

    monkeypatch.setattr(runs_inspect, "sample_moments", counting)
    state = run_batches(net, xs, inference=inference)
    assert sorted(state.acc) == ["a", "b"]
    # per batch: a's input, a's output, b's output, and b's input unless a's output is reused:
    # never under inference mode (no version counter), never after an in-place change
    reused = not inference and not inplace_between
    assert len(calls) == len(xs) * (3 if reused else 4)
    assert state._last_out is None  # nothing kept after the run
    for name in ("a", "b"):
        got = state.acc[name].ratio.finalize()
        assert got is not None and got.batches == len(xs)
        assert got.mean == pytest.approx(_hand_ratio(net, name, xs), rel=1e-5)
