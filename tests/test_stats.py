"""Streaming accumulators: exact against torch, mergeable, bounded memory."""

from __future__ import annotations

import pytest
import torch

from coordatt_diag.stats.masks import (
    FOLD_EVERY,
    BlockAccumulator,
    MaskAccumulator,
    RatioAccumulator,
    _batch_part,
    _masked_part,
)


def _mask(seed: int, shape: tuple[int, ...] = (4, 6, 5, 1)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_statistics_over_batches_equal_torch() -> None:
    parts = [_mask(i) for i in range(5)]
    acc = MaskAccumulator()
    for p in parts:
        acc.update(p)
    s = acc.finalize()
    flat = torch.cat(parts).double().flatten()
    assert s.count == flat.numel()
    assert s.mean == pytest.approx(float(flat.mean()), abs=1e-7)
    assert s.std == pytest.approx(float(flat.std()), abs=1e-7)  # float32 variance
    assert s.min == pytest.approx(float(flat.min()))
    assert s.max == pytest.approx(float(flat.max()))
    assert s.hist == torch.histc(flat.float(), bins=64, min=0, max=1).long().tolist()
    rows = torch.cat(parts).reshape(-1, 5)
    assert s.pos_std == pytest.approx(float(rows.std(1, correction=0).mean()), abs=1e-6)
    assert s.profile_h is not None and len(s.profile_h.mean) == 5
    assert s.profile_w is None


def test_merge_of_halves_equals_whole_run() -> None:
    parts = [_mask(i, (3, 4, 1, 7)) for i in range(6)]
    whole, first, second = MaskAccumulator(), MaskAccumulator(), MaskAccumulator()
    for i, p in enumerate(parts):
        whole.update(p)
        (first if i < 3 else second).update(p)
    first.merge(second)
    a, b = whole.finalize(), first.finalize()
    for field in ("count", "mean", "std", "min", "max", "sat_low", "sat_high", "pos_std",
                  "chan_std", "hist"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-9), field
    assert a.profile_w == pytest.approx(b.profile_w)


def test_merge_into_empty_and_ratio_merge() -> None:
    x1, x2 = torch.randn(4, 3, 5, 5), torch.randn(2, 3, 5, 5)
    whole, one, two = RatioAccumulator(), RatioAccumulator(), RatioAccumulator()
    for x, acc in ((x1, one), (x2, two)):
        whole.update(x, x * 0.5)
        acc.update(x, x * 0.5)
    empty = RatioAccumulator()
    empty.merge(one)
    empty.merge(two)
    a, b = empty.finalize(), whole.finalize()
    assert a is not None and b is not None
    assert a.mean == pytest.approx(b.mean) and a.min == pytest.approx(b.min)
    assert a.batches == b.batches
    r = whole.finalize()
    assert r is not None and r.mean == pytest.approx(0.5) and r.batches == 2


def test_nonfinite_values_are_counted_and_left_out() -> None:
    m = _mask(0)
    m[0, 0, 0, 0] = float("nan")
    m[1, 2, 3, 0] = float("inf")
    acc = MaskAccumulator()
    acc.update(m)
    s = acc.finalize()
    finite = m[torch.isfinite(m)].double()
    assert s.nonfinite == 2
    assert s.count == finite.numel()
    assert s.mean == pytest.approx(float(finite.mean()), abs=1e-9)
    assert s.std == pytest.approx(float(finite.std()), abs=1e-9)
    assert sum(s.hist) == finite.numel()


def test_saturation_and_exact_shares() -> None:
    m = torch.tensor([0.0, 0.005, 0.5, 0.995, 1.0, 1.0, 0.3, 0.7]).reshape(1, 1, 8, 1)
    acc = MaskAccumulator()
    acc.update(m)
    s = acc.finalize()
    assert s.sat_low == pytest.approx(2 / 8)
    assert s.sat_high == pytest.approx(3 / 8)
    assert s.exact01 == pytest.approx(3 / 8)


def test_shape_change_drops_profiles_but_keeps_statistics() -> None:
    acc = MaskAccumulator()
    acc.update(_mask(0, (2, 3, 4, 1)))
    acc.update(_mask(1, (2, 3, 6, 1)))
    s = acc.finalize()
    assert s.profile_h is None and s.count == 2 * 3 * 4 + 2 * 3 * 6


def test_memory_does_not_grow_with_batches() -> None:
    acc = BlockAccumulator.empty()
    x = torch.randn(2, 4, 6, 6)
    sizes = []
    for i in range(40):
        acc.update(x, x, {"a_h": _mask(i, (2, 4, 6, 1))})
        state = acc.masks["a_h"].state()
        sizes.append(sum(t.numel() for t in state.values()))
    assert len(set(sizes)) == 1


def test_fast_path_equals_masked_path_on_edge_values() -> None:
    edges = [0.0, 1e-30, 0.01, 0.0100001, 0.0099999, 0.5, 0.98999, 0.99, 0.990001, 1.0,
             0.9999999, 1 / 64, 2 / 64, 63 / 64, 31 / 64 - 1e-7]
    m = torch.tensor(edges + torch.rand(201, generator=torch.Generator().manual_seed(1)).tolist())
    m = m.reshape(1, 2, -1, 1)
    fast, slow = _batch_part(m), _masked_part(m)
    assert fast.n == slow.n and fast.pos_rows == slow.pos_rows
    assert torch.equal(fast.hist, slow.hist)
    assert torch.equal(fast.counts, slow.counts)
    torch.testing.assert_close(fast.scal.double(), slow.scal, rtol=1e-6, atol=1e-7)
    assert fast.hist.tolist() == torch.histc(m, bins=64, min=0, max=1).long().tolist()


def test_many_batches_fold_exactly() -> None:
    parts = [_mask(i, (2, 3, 4, 1)) for i in range(3 * FOLD_EVERY + 5)]
    acc = MaskAccumulator()
    for p in parts:
        acc.update(p)
    s = acc.finalize()
    flat = torch.cat(parts).double().flatten()
    assert s.count == flat.numel()
    assert s.mean == pytest.approx(float(flat.mean()), abs=1e-7)
    assert s.std == pytest.approx(float(flat.std()), abs=1e-7)
    assert s.min == pytest.approx(float(flat.min())) and s.max == pytest.approx(float(flat.max()))


def test_merge_leaves_the_other_accumulator_unchanged() -> None:
    a, b = MaskAccumulator(), MaskAccumulator()
    b.update(_mask(1, (2, 3, 4, 1)))
    before = b.finalize()
    a.merge(b)
    a.update(_mask(2, (2, 3, 4, 1)))
    assert b.finalize() == before


def test_device_path_equals_host_path() -> None:
    """The accelerator path (no host transfer per batch) gives the CPU path's statistics."""
    gen = torch.Generator().manual_seed(3)
    batches = [torch.rand((3, 4, 6, 1), generator=gen) ** 3 for _ in range(FOLD_EVERY + 3)]
    batches[2][0, 0, 0, 0] = 1.0
    batches[4][1, 2, 3, 0] = 0.0
    host, device = MaskAccumulator(), MaskAccumulator()
    for m in batches:
        host.update(m)
        device._add(_masked_part(m))
    a, b = host.finalize(), device.finalize()
    for field in ("count", "mean", "std", "min", "max", "sat_low", "sat_high", "exact01",
                  "nonfinite", "pos_std", "chan_std", "hist"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-6, abs=1e-7), field
    assert a.profile_h is not None and b.profile_h is not None
    assert a.profile_h.mean == pytest.approx(b.profile_h.mean, rel=1e-6)
    assert a.profile_h.spread == pytest.approx(b.profile_h.spread, rel=1e-5)


def test_device_path_counts_nonfinite_without_a_host_transfer() -> None:
    m = torch.rand(2, 3, 4, 1, generator=torch.Generator().manual_seed(5))
    m[0, 1, 2, 0] = float("nan")
    m[1, 0, 0, 0] = float("inf")
    part = _masked_part(m)
    assert isinstance(part.n, torch.Tensor) and int(part.n) == m.numel() - 2
    acc = MaskAccumulator()
    acc._add(part)
    s = acc.finalize()
    finite = m[torch.isfinite(m)].double()
    assert s.nonfinite == 2 and s.count == finite.numel()
    assert s.mean == pytest.approx(float(finite.mean()), abs=1e-7)
    assert s.std == pytest.approx(float(finite.std()), abs=1e-6)
    assert sum(s.hist) == finite.numel()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_statistics_equal_cpu() -> None:
    m = torch.rand(4, 8, 10, 1, generator=torch.Generator().manual_seed(7))
    host, dev = MaskAccumulator(), MaskAccumulator()
    host.update(m)
    dev.update(m.cuda())
    a, b = host.finalize(), dev.finalize()
    assert a.hist == b.hist and a.count == b.count
    assert a.std == pytest.approx(b.std, rel=1e-5)
    assert a.pos_std == pytest.approx(b.pos_std, rel=1e-5)


def test_states_of_inference_runs_merge_outside_inference_mode() -> None:
    a, b = BlockAccumulator.empty(), BlockAccumulator.empty()
    x = torch.randn(2, 3, 4, 4)
    with torch.inference_mode():
        a.update(x, x, {"a_h": _mask(1, (2, 3, 4, 1))})
        b.update(x, x, {"a_h": _mask(2, (2, 3, 4, 1))})
    a.merge(b)
    assert a.masks["a_h"].finalize().count == 2 * 2 * 3 * 4
