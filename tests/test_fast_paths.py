"""The per-batch fast paths: gate-site hooks, the functional fallback, reused input moments."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from coordatt_diag.capture import engine
from coordatt_diag.capture.engine import BlockCall, BlockSpec, MaskCapture, discover_blocks
from coordatt_diag.runs import inspect as runs_inspect
from coordatt_diag.runs.inspect import run_batches
from tests.fixtures import models as fx


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


# ---------------------------------------------------------------------------------------------
# Gate-site hooks


class _GateSE(nn.Module):
    """SE whose gate is the module it is given (possibly shared)."""

    def __init__(self, c: int, gate: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class _SharedAcross(nn.Module):
    """One nn.Sigmoid: registered first outside the blocks, called outside them (a SiLU-like
    activation) and as the gate of two SE blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.sig = nn.Sigmoid()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = _GateSE(8, self.sig)
        self.b = _GateSE(8, self.sig)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = y * self.sig(y)
        return self.b(self.a(y))


class _Outer(nn.Module):
    """An SE gate (its own nn.Sigmoid) around a coordinate block with one shared gate module."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.inner = fx.SharedGateCoordAtt(c)
        self.fc = nn.Conv2d(c, c, 1)
        self.g = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.g(self.fc(x.mean((2, 3), keepdim=True)))


def _inputs(net: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    modules = dict(net.named_modules())
    handles = [modules[n].register_forward_pre_hook(
        lambda m, a, n=n: seen.setdefault(n, a[0].detach().clone())) for n in names]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _count_tracer(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    entered: list[int] = []
    real = engine._Watch.__enter__

    def enter(self: engine._Watch) -> engine._Watch:
        entered.append(1)
        return real(self)

    monkeypatch.setattr(engine._Watch, "__enter__", enter)
    return entered


def _no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def _capture(net: nn.Module, specs: list[BlockSpec], x: torch.Tensor,
             **kwargs: object) -> tuple[torch.Tensor, list[BlockCall]]:
    calls: list[BlockCall] = []
    with torch.inference_mode(), MaskCapture(net, specs, calls.append, **kwargs) as cap:  # type: ignore[arg-type]
        out = net(x)
        assert cap.hook_count > 0
    assert cap.hook_count == 0 and _no_hooks(net)
    assert torch._C._len_torch_function_stack() == 0
    return out, calls


def _x4(c: int = 3, seed: int = 0, b: int = 3) -> torch.Tensor:
    return torch.randn(b, c, 12, 10, generator=torch.Generator().manual_seed(seed))


def test_one_gate_module_called_twice_maps_each_call_to_its_mask(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    block = fx.SharedGateCoordAtt(16).eval()
    x = _x4(16)
    specs = discover_blocks(block, x)
    assert len(specs) == 1 and specs[0].hooked
    assert [(s.gate_module, s.gate_call) for s in specs[0].sites] == [("gate", 0), ("gate", 1)]
    entered = _count_tracer(monkeypatch)
    _, calls = _capture(block, specs, x)
    assert entered == []  # no tracer anywhere
    ref = block.reference_masks(x)  # type: ignore[operator]
    assert set(calls[0].masks) == set(ref) == {"a_h", "a_w"}
    for name, mask in calls[0].masks.items():
        torch.testing.assert_close(mask, ref[name].reshape(mask.shape))


def test_gate_module_shared_by_two_blocks_and_called_outside_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = _SharedAcross().eval()
    x = _x4()
    specs = discover_blocks(net, x)
    assert [s.name for s in specs] == ["a", "b"]
    assert all(s.hooked and s.sites[0].gate_module == "gate" for s in specs)
    entered = _count_tracer(monkeypatch)
    _, calls = _capture(net, specs, x)
    assert entered == [] and [c.spec.name for c in calls] == ["a", "b"]
    xin = _inputs(net, ["a", "b"], x)
    for call in calls:
        module = dict(net.named_modules())[call.spec.name]
        with torch.no_grad():
            ref = module.reference(xin[call.spec.name])  # type: ignore[operator]
        torch.testing.assert_close(call.masks["channel"], ref.reshape(call.masks["channel"].shape))


def test_functional_gates_keep_the_tracer_only_in_their_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), fx.SharedGateCoordAtt(8),
                        nn.Conv2d(8, 8, 1), fx.OfficialCoordAtt(8)).eval()
    x = _x4()
    specs = discover_blocks(net, x)
    assert [(s.name, s.hooked) for s in specs] == [("1", True), ("3", False)]
    entered = _count_tracer(monkeypatch)
    with torch.no_grad():
        base = net(x)
    out, calls = _capture(net, specs, x)
    assert len(entered) == 1  # switched on for the functional block's one call
    torch.testing.assert_close(out, base)
    xin = _inputs(net, ["1", "3"], x)
    for call in calls:
        module = dict(net.named_modules())[call.spec.name]
        ref = module.reference_masks(xin[call.spec.name])  # type: ignore[operator]
        assert set(call.masks) == set(ref)
        for name, mask in call.masks.items():
            torch.testing.assert_close(mask, ref[name].reshape(mask.shape))


def test_replace_through_a_gate_module_hook() -> None:
    torch.manual_seed(0)
    block = fx.SharedGateCoordAtt(16).eval()
    x = _x4(16)
    specs = discover_blocks(block, x)
    asked: list[tuple[str, int]] = []

    def ones_for_a_h(name: str, ordinal: int, gate: torch.Tensor) -> torch.Tensor | None:
        asked.append((name, ordinal))
        return torch.ones_like(gate) if ordinal == specs[0].mask_gates[0] else None

    out, calls = _capture(block, specs, x, replace=ones_for_a_h)
    assert asked == [("", g) for g in specs[0].mask_gates]
    with torch.no_grad():
        _, y_w = block.mid(x)
        expected = x * block.gate(block.fw(y_w))
    torch.testing.assert_close(out, expected)
    assert bool((calls[0].masks["a_h"] == 1).all())  # the mask seen is the replacement


def test_nested_blocks_each_count_their_gate_module_calls() -> None:
    torch.manual_seed(0)
    net = _Outer(8).eval()
    x = _x4(8)
    outer = discover_blocks(net, x)
    assert [s.name for s in outer] == [""] and outer[0].hooked
    assert sorted((s.gate_module, s.gate_call) for s in outer[0].sites) == [
        ("g", 0), ("inner.gate", 0), ("inner.gate", 1)]
    inner = discover_blocks(net.inner, x)[0]
    specs = [outer[0], dataclasses.replace(inner, name="inner")]
    _, calls = _capture(net, specs, x)
    assert [c.spec.name for c in calls] == ["inner", ""]
    ref = net.inner.reference_masks(x)  # type: ignore[operator]
    for call in calls:
        for name in ("a_h", "a_w"):
            torch.testing.assert_close(call.masks[name], ref[name].reshape(call.masks[name].shape))


def test_every_hook_is_removed_after_an_exception() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(fx.SharedGateCoordAtt(8), fx.OfficialCoordAtt(8)).eval()
    x = _x4(8)
    specs = discover_blocks(net, x)

    def fail(call: BlockCall) -> None:
        raise RuntimeError("callback failed")

    cap = MaskCapture(net, specs, fail)
    with pytest.raises(RuntimeError, match="callback failed"), torch.inference_mode(), cap:
        net(x)
    assert cap.hook_count == 0 and _no_hooks(net)
    assert torch._C._len_torch_function_stack() == 0
    assert not cap._frames and not cap._watch.frames
