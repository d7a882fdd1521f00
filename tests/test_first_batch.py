"""The discovery pass counts: a run traces its first batch's first samples once and does not run
them again, with the same statistics as a run that reads every batch whole."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from coordatt_diag.blocks.cbam_coord import CoordinateAttPlus
from coordatt_diag.capture import engine
from coordatt_diag.capture.engine import DISCOVERY_BATCH, discover_blocks, trace_blocks
from coordatt_diag.runs.inspect import RunState, discover, run_batches
from coordatt_diag.stats.masks import sample_moments
from tests.fixtures.compare import assert_close_tree
from tests.wild import corpus


def _stats(state: RunState, model: nn.Module) -> dict[tuple[str, str], Any]:
    """Every statistic of a run, the observers' too."""
    modules = dict(model.named_modules())
    out: dict[tuple[str, str], Any] = {}
    for name, acc in state.acc.items():
        r = acc.ratio.finalize()
        out[(name, "std ratio")] = None if r is None else dataclasses.asdict(r)
        for mask, macc in acc.masks.items():
            out[(name, mask)] = dataclasses.asdict(macc.finalize())
        for i, observer in enumerate(state.observers):
            out[(name, f"observer {i}")] = observer.results(name, modules[name])
    return out


def _close(a: Any, b: Any, where: str = "") -> None:
    assert_close_tree(a, b, rel=1e-5, abs_=1e-5, where=where)


def _samples_run(model: nn.Module) -> tuple[list[int], Any]:
    """Counts the samples of every forward pass of `model`."""
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, a: seen.append(int(a[0].shape[0])))
    return seen, handle


def _both(model: nn.Module, xs: list[torch.Tensor], **kwargs: Any
          ) -> tuple[RunState, RunState, list[int]]:
    """The run from its first batch (fused) and the run of every batch whole (blocks given)."""
    seen, handle = _samples_run(model)
    try:
        fused = run_batches(model, xs, **kwargs)
    finally:
        handle.remove()
    with torch.inference_mode():
        blocks = discover_blocks(model, xs[0][:2], kwargs.get("blocks_pattern"))
    whole = run_batches(model, xs, blocks=blocks)
    return fused, whole, seen


def _batches(sizes: tuple[int, ...], h: int = 12, w: int = 10, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, h, w, generator=g) for n in sizes]


@pytest.mark.parametrize("case", corpus.CASES, ids=[c.id for c in corpus.CASES])
def test_every_public_pattern_counts_the_traced_samples(case: corpus.Case) -> None:
    net = corpus.build(case, 16)
    xs = _batches((7, 5, 6))
    with torch.inference_mode():
        found = discover(net, xs[0][:DISCOVERY_BATCH], measure=False, keep=True)
    assert found.first is not None and set(found.first) == {s.name for s in found.blocks}
    fused, whole, seen = _both(net, xs)
    _close(_stats(fused, net), _stats(whole, net))
    # the first batch's first five samples ran once, in the traced pass
    assert sum(seen) == 7 + 5 + 6, seen


def test_the_traced_samples_and_the_rest_are_one_batch() -> None:
    net = corpus.build(corpus.CASES[0], 16)
    for sizes in [(5,), (5, 8), (6, 2), (9,)]:
        fused, whole, seen = _both(net, _batches(sizes))
        _close(_stats(fused, net), _stats(whole, net), str(sizes))
        for acc in fused.acc.values():
            ratio = acc.ratio.finalize()
            assert ratio is not None and ratio.batches == len(sizes)
        assert sum(seen) == sum(sizes)


def test_a_small_first_batch_is_discovered_apart() -> None:
    net = corpus.build(corpus.CASES[0], 16)
    xs = _batches((4, 8))
    fused, whole, seen = _both(net, xs)
    _close(_stats(fused, net), _stats(whole, net))
    assert seen == [DISCOVERY_BATCH, 4, 8]  # the traced pass (2 samples repeated), then the run


class _InPlaceSE(nn.Module):
    """Scales its own input in place: the std ratio's input moments are the ones before."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        x.mul_(a)
        return x


class _InPlaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.att = _InPlaceSE(8)
        self.act = nn.ReLU(inplace=True)  # changes the block's output after the block
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.att(self.stem(x))))


def test_inputs_changed_in_place_keep_their_moments_from_before() -> None:
    net = _InPlaceNet().eval()
    xs = _batches((6, 7))
    with torch.inference_mode():
        traced = trace_blocks(net, xs[0][:DISCOVERY_BATCH], moments=sample_moments)
        assert traced.first is not None
        first = traced.first["att"]
        x = net.stem(xs[0][:DISCOVERY_BATCH])
        a = torch.sigmoid(net.att.fc(x.mean((2, 3), keepdim=True)))
        assert first.x_moments is not None and first.out_moments is not None
        torch.testing.assert_close(first.x_moments, sample_moments(x))
        torch.testing.assert_close(first.out_moments, sample_moments(x * a))
        torch.testing.assert_close(first.masks["channel"], a.reshape(5, 8, 1, 1))
    fused, whole, _ = _both(net, xs)
    _close(_stats(fused, net), _stats(whole, net))


class _Twice(nn.Module):
    """One block called twice in a forward pass: discovered, then every call read live."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.att = corpus.A.SELayer(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.att(self.att(self.stem(x))))


def _read_whole(net: nn.Module) -> None:
    """The pass keeps nothing, and the run reads its first batch whole, with the statistics of
    a run given the blocks."""
    xs = _batches((6, 5))
    with torch.inference_mode():
        traced = trace_blocks(net, xs[0][:DISCOVERY_BATCH], moments=sample_moments)
    assert traced.blocks and traced.first is None
    fused, whole, seen = _both(net, xs)
    _close(_stats(fused, net), _stats(whole, net))
    assert sum(seen) == DISCOVERY_BATCH + 6 + 5


def test_a_block_called_twice_is_read_again() -> None:
    _read_whole(_Twice().eval())


def test_past_the_keep_limit_the_first_batch_runs_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "KEEP_LIMIT", 16)
    _read_whole(corpus.build(corpus.CASES[0], 16))


def test_blocks_an_observer_streams_are_read_live() -> None:
    # the seed block with a scale clamp: the monitor must see every call itself
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), CoordinateAttPlus(16),
                        nn.Conv2d(16, 4, 1)).eval()
    xs = _batches((6, 5), h=10, w=10)
    fused, whole, seen = _both(net, xs)
    assert fused.sees_every_call(net)
    _close(_stats(fused, net), _stats(whole, net))
    assert sum(seen) == DISCOVERY_BATCH + 6 + 5


def test_no_tensor_of_the_traced_pass_is_kept_after_the_run() -> None:
    net = _InPlaceNet().eval()
    xs = _batches((6,))
    with torch.inference_mode():
        traced = trace_blocks(net, xs[0][:DISCOVERY_BATCH], moments=sample_moments)
    assert traced.first is not None
    import gc
    import weakref

    refs = [weakref.ref(m) for call in traced.first.values() for m in call.masks.values()]
    del traced
    gc.collect()
    assert all(r() is None for r in refs)


class _DictBelowFive(nn.Module):
    """An SE block whose output is a dict for batches under five samples (no tensor to take
    moments of): the traced samples' std ratio then counts as a batch of its own."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> Any:
        out = x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        return out if x.shape[0] >= DISCOVERY_BATCH else {"out": out}


def test_traced_samples_the_rest_cannot_join_count_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _DictBelowFive(8)).eval()
    xs = _batches((7,))
    with torch.inference_mode():
        state = run_batches(net, xs)
        x = net[0](xs[0][:DISCOVERY_BATCH]).double()
        out = net[1](x.float()).double()
    ratio = state.acc["1"].ratio.finalize()
    assert ratio is not None and ratio.batches == 1
    hand = float(out.flatten(1).std(1, correction=0).mean() / x.flatten(1).std(1, correction=0).mean())
    assert ratio.mean == pytest.approx(hand, rel=1e-5)
    assert state.acc["1"].masks["channel"].finalize().count == 7 * 8  # every sample's masks
