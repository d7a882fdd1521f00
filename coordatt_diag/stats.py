"""Streaming statistics of masks and std ratios.

Each batch is reduced, on the model's device and without Python loops over values, to a few
numbers per mask, and folded into an accumulator; masks are never kept, so memory does not grow
with the number of batches, and nothing is copied to the host until `finalize()`. Accumulators
merge (`merge`), so two halves of a run give the same result as the whole run, to float
tolerance: the mean and variance are combined with Chan et al.'s parallel formula, counts and
sums add, minima and maxima combine.

Definitions (the README's "Statistics" section repeats them):

* `std`: unbiased std over every finite value of every batch (for one batch, the seed's
  `last_mask_stats()["a_h"]["std"]`, which is `torch.std`);
* `sat_low` / `sat_high`: share of values <= 0.01 / >= 0.99; `exact01`: share exactly 0 or 1;
* `pos_std`: for each sample and channel, the population std of the mask along its positional
  axes (H for a_h, W for a_w, H*W for a_hw and spatial), averaged over samples and channels;
* `chan_std`: population std across channels of each channel's mean value;
* `hist`: 64 bins over [0, 1];
* std ratio: per batch mean_i std(out_i) / mean_i std(x_i), population std over C*H*W of each
  sample (the seed's `r_out_pre`); reported as the sample-weighted mean over batches and the
  minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from coordatt_diag.results import AxisProfile, MaskStats, StdRatio

HIST_BINS = 64
SAT_LOW = 0.01
SAT_HIGH = 0.99

_F64 = torch.float64


class MaskAccumulator:
    """Running statistics of one mask (canonical 4-D layout (B, C, H, W)).

    Example:
        >>> acc = MaskAccumulator()
        >>> acc.update(torch.rand(8, 16, 7, 1))
        >>> acc.finalize().std
    """

    def __init__(self) -> None:
        self.n: torch.Tensor | None = None  # finite values (int64)
        self.mean: torch.Tensor | None = None  # float64
        self.m2: torch.Tensor | None = None  # sum of squared deviations, float64
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.hist: torch.Tensor | None = None  # int64 (HIST_BINS,)
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None
        self.exact: torch.Tensor | None = None
        self.nonfinite: torch.Tensor | None = None
        self.pos_sum: torch.Tensor | None = None  # sum over rows of per-row std
        self.pos_rows: torch.Tensor | None = None
        self.sum_h: torch.Tensor | None = None  # (C, H) sums over samples and W
        self.sum_w: torch.Tensor | None = None  # (C, W) sums over samples and H
        self.samples = 0
        self.shape: tuple[int, int, int] | None = None
        self.shape_varied = False

    def update(self, mask: torch.Tensor) -> None:
        """Fold one batch of this mask, (B, C, H, W), into the statistics."""
        self.merge(MaskAccumulator.of_batch(mask))

    @classmethod
    def of_batch(cls, mask: torch.Tensor) -> MaskAccumulator:
        """The statistics of one batch of a mask, (B, C, H, W).

        One host transfer per batch decides the path: when the sum is finite every value is,
        and no value needs masking out; otherwise non-finite values are masked value by value.
        """
        m = mask.detach()
        if m.dtype not in (torch.float32, _F64):
            m = m.float()
        b, c, h, w = m.shape
        # Per-row means (a row: one sample and channel along the mask's positions) give the total,
        # and the deviations from them give both the positional std and, by the law of total
        # variance, the whole mask's variance: fewer passes over the mask than separate reductions.
        rows = m.reshape(b * c, h * w)
        row_mean = rows.mean(dim=1)
        lo, hi = torch.aminmax(m)
        total_v, lo_v, hi_v = torch.stack([row_mean.sum(), lo, hi]).tolist()
        if math.isfinite(total_v):
            acc = cls._finite_batch(m, rows, row_mean, lo, hi, lo_v, hi_v)
        else:
            acc = cls._masked_batch(m)
        acc.samples, acc.shape = b, (c, h, w)
        return acc

    @classmethod
    def _finite_batch(cls, m: torch.Tensor, rows: torch.Tensor, row_mean: torch.Tensor,
                      lo: torch.Tensor, hi: torch.Tensor, lo_v: float,
                      hi_v: float) -> MaskAccumulator:
        b, c, h, w = m.shape
        n = m.numel()
        length = h * w
        dev = m.device
        zero = torch.zeros((), dtype=torch.int64, device=dev)
        acc = cls()
        acc.n = torch.tensor(n, dtype=torch.int64, device=dev)
        row_mean64 = row_mean.to(_F64)
        mean = row_mean64.mean()
        between = ((row_mean64 - mean) ** 2).sum() * length
        if length > 1:
            # one pass: the norm of each row's deviations is sqrt(length) times its std
            row_norm = torch.linalg.vector_norm(rows - row_mean.unsqueeze(1), dim=1).to(_F64)
            acc.m2 = (row_norm * row_norm).sum() + between
            acc.pos_sum = row_norm.sum() / math.sqrt(length)
            acc.pos_rows = torch.tensor(b * c, dtype=torch.int64, device=dev)
        else:
            acc.m2 = between
            acc.pos_sum = torch.zeros((), dtype=_F64, device=dev)
            acc.pos_rows = zero
        acc.mean = mean
        acc.min, acc.max = lo.to(_F64), hi.to(_F64)
        flat = m.reshape(-1)
        if lo_v >= 0.0 and hi_v <= 1.0:
            # bin k holds [k/64, (k+1)/64), 1.0 the last: x * 64 is exact in binary floating point,
            # so this equals torch.histc over [0, 1] at a tenth of its cost
            idx = (flat * HIST_BINS).to(torch.int32)
            counts = torch.bincount(idx, minlength=HIST_BINS + 1)
            counts[HIST_BINS - 1:HIST_BINS] += counts[HIST_BINS:]  # exact ones: the last bin
            acc.hist = counts[:HIST_BINS]
        else:
            acc.hist = torch.histc(flat.float(), bins=HIST_BINS, min=0.0, max=1.0).to(torch.int64)
        # the range (already on the host) says which tails can hold values at all; a healthy
        # mask skips all four comparisons
        acc.low = (flat <= SAT_LOW).sum() if lo_v <= SAT_LOW else zero
        acc.high = (flat >= SAT_HIGH).sum() if hi_v >= SAT_HIGH else zero
        exact = zero
        if lo_v <= 0.0:
            exact = exact + (flat == 0).sum()
        if hi_v >= 1.0:
            exact = exact + (flat == 1).sum()
        acc.exact = exact
        acc.nonfinite = zero
        acc.sum_h = m.sum(dim=(0, 3)).to(_F64)
        acc.sum_w = acc.sum_h.sum(dim=1, keepdim=True) if w == 1 else m.sum(dim=(0, 2)).to(_F64)
        return acc

    @classmethod
    def _masked_batch(cls, m: torch.Tensor) -> MaskAccumulator:
        b, c, h, w = m.shape
        zero = torch.zeros((), dtype=m.dtype, device=m.device)
        finite = torch.isfinite(m)
        v = torch.where(finite, m, zero)
        acc = cls()
        acc.n = finite.sum()
        acc.mean = v.sum(dtype=_F64) / acc.n.to(_F64).clamp(min=1)
        dev = torch.where(finite, m - acc.mean.to(m.dtype), zero)
        acc.m2 = (dev * dev).sum(dtype=_F64)
        inf = torch.tensor(math.inf, dtype=m.dtype, device=m.device)
        acc.min = torch.where(finite, m, inf).amin().to(_F64)
        acc.max = torch.where(finite, m, -inf).amax().to(_F64)
        acc.hist = torch.histc(m.float(), bins=HIST_BINS, min=0.0, max=1.0).to(torch.int64)
        acc.low = ((m <= SAT_LOW) & finite).sum()
        acc.high = ((m >= SAT_HIGH) & finite).sum()
        acc.exact = ((m == 0) | (m == 1)).sum()
        acc.nonfinite = m.numel() - acc.n
        if h * w > 1:
            # rows holding a non-finite value are left out of the positional std
            row_ok = finite.reshape(b * c, h * w).all(dim=1)
            row_std = v.reshape(b * c, h * w).std(dim=1, correction=0)
            acc.pos_sum = torch.where(row_ok, row_std, torch.zeros_like(row_std)).sum(dtype=_F64)
            acc.pos_rows = row_ok.sum()
        else:
            acc.pos_sum = torch.zeros((), dtype=_F64, device=m.device)
            acc.pos_rows = torch.zeros((), dtype=torch.int64, device=m.device)
        acc.sum_h = v.sum(dim=(0, 3), dtype=_F64)
        acc.sum_w = v.sum(dim=(0, 2), dtype=_F64)
        return acc

    def merge(self, other: MaskAccumulator) -> None:
        """Combine `other` (the statistics of other batches) into this accumulator."""
        if other.n is None:
            return
        if self.n is None:
            self.__dict__.update({k: v for k, v in other.__dict__.items()})
            return
        assert self.mean is not None and self.m2 is not None and other.mean is not None
        assert other.m2 is not None
        n_a = self.n.to(_F64)
        n_b = other.n.to(_F64).to(n_a.device)
        n = (n_a + n_b).clamp(min=1)
        delta = other.mean.to(n_a.device) - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + other.m2.to(n_a.device) + delta * delta * n_a * n_b / n
        self.n = self.n + other.n.to(self.n.device)
        assert self.min is not None and self.max is not None
        assert other.min is not None and other.max is not None
        self.min = torch.minimum(self.min, other.min.to(n_a.device))
        self.max = torch.maximum(self.max, other.max.to(n_a.device))
        for attr in ("hist", "low", "high", "exact", "nonfinite", "pos_sum", "pos_rows"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr).to(n_a.device))
        if self.shape == other.shape and not (self.shape_varied or other.shape_varied):
            self.sum_h = self.sum_h + other.sum_h.to(n_a.device)  # type: ignore[operator,union-attr]
            self.sum_w = self.sum_w + other.sum_w.to(n_a.device)  # type: ignore[operator,union-attr]
        else:
            self.shape_varied = True
            self.sum_h = self.sum_h if self.shape == other.shape else None
            self.sum_w = self.sum_w if self.shape == other.shape else None
        self.samples += other.samples

    def state(self) -> dict[str, torch.Tensor]:
        """The accumulator as named tensors (for collectives across processes)."""
        if self.n is None:
            raise ValueError("empty accumulator")
        return {k: v for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}

    def finalize(self) -> MaskStats:
        """Move the statistics to the host (one transfer) and freeze them."""
        if self.n is None:
            raise ValueError("no batch was seen")
        assert self.shape is not None
        n = int(self.n.item())
        nonfinite = int(self.nonfinite.item())  # type: ignore[union-attr]
        total = max(n, 1)
        c, h, w = self.shape
        pos_rows = int(self.pos_rows.item())  # type: ignore[union-attr]
        pos_std = (float(self.pos_sum.item()) / pos_rows  # type: ignore[union-attr]
                   if h * w > 1 and pos_rows > 0 else None)
        chan_std = None
        prof_h = prof_w = None
        if self.sum_h is not None and self.sum_w is not None and not self.shape_varied:
            per_ch_h = self.sum_h / (self.samples * w)  # (C, H) mean per channel and row
            per_ch_w = self.sum_w / (self.samples * h)
            chan_mean = per_ch_h.mean(dim=1)
            if c > 1:
                chan_std = float(chan_mean.std(correction=0).item())
            if h > 1:
                prof_h = _profile(per_ch_h)
            if w > 1:
                prof_w = _profile(per_ch_w)
        std = math.sqrt(float(self.m2.item()) / (n - 1)) if n > 1 else None  # type: ignore[union-attr]
        return MaskStats(
            count=n,
            min=float(self.min.item()) if n else None,  # type: ignore[union-attr]
            max=float(self.max.item()) if n else None,  # type: ignore[union-attr]
            mean=float(self.mean.item()) if n else None,  # type: ignore[union-attr]
            std=std,
            sat_low=int(self.low.item()) / total,  # type: ignore[union-attr]
            sat_high=int(self.high.item()) / total,  # type: ignore[union-attr]
            exact01=int(self.exact.item()) / total,  # type: ignore[union-attr]
            nonfinite=nonfinite,
            pos_std=pos_std,
            chan_std=chan_std,
            hist=[int(x) for x in self.hist.tolist()],  # type: ignore[union-attr]
            shape=[c, h, w],
            profile_h=prof_h,
            profile_w=prof_w,
        )


def _profile(per_channel: torch.Tensor) -> AxisProfile:
    return AxisProfile(
        mean=[float(x) for x in per_channel.mean(dim=0).tolist()],
        spread=[float(x) for x in per_channel.std(dim=0, correction=0).tolist()],
    )


def std_per_sample(t: torch.Tensor) -> torch.Tensor:
    """Population std over C*H*W of each sample, shape (B,), in float64.

    From one sum and one norm per sample (each a single read of the tensor, where `std` reads
    it twice); the float64 combination keeps the cancellation harmless for activations.
    """
    flat = t.detach().reshape(t.shape[0], -1)
    if flat.dtype not in (torch.float32, _F64):
        flat = flat.float()
    n = flat.shape[1]
    # float32 reductions (pairwise) then float64: a float64 reduction is ~25x slower on the CPU
    mean = flat.sum(dim=1).to(_F64) / n
    sq = torch.linalg.vector_norm(flat, dim=1).to(_F64) ** 2 / n
    return (sq - mean * mean).clamp(min=0).sqrt()


class RatioAccumulator:
    """Running std ratio of a block (sample-weighted mean and minimum over batches)."""

    def __init__(self) -> None:
        self.weighted: torch.Tensor | None = None
        self.samples = 0
        self.min: torch.Tensor | None = None
        self.batches = 0

    def update(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Fold one batch: the seed's r_out_pre = mean_i std(out_i) / mean_i std(x_i)."""
        if out.shape[0] != x.shape[0]:
            return
        r = (std_per_sample(out).mean() / std_per_sample(x).mean().clamp(min=1e-12)).double()
        b = int(x.shape[0])
        other = RatioAccumulator()
        other.weighted, other.samples, other.min, other.batches = r * b, b, r, 1
        self.merge(other)

    def merge(self, other: RatioAccumulator) -> None:
        """Combine the batches of `other` into this accumulator."""
        if other.weighted is None:
            return
        if self.weighted is None:
            self.weighted, self.samples = other.weighted, other.samples
            self.min, self.batches = other.min, other.batches
            return
        dev = self.weighted.device
        self.weighted = self.weighted + other.weighted.to(dev)
        self.min = torch.minimum(self.min, other.min.to(dev))  # type: ignore[arg-type,union-attr]
        self.samples += other.samples
        self.batches += other.batches

    def finalize(self) -> StdRatio | None:
        """The frozen std ratio, None when no batch was measured."""
        if self.weighted is None or self.samples == 0:
            return None
        return StdRatio(
            mean=float(self.weighted.item()) / self.samples,
            min=float(self.min.item()),  # type: ignore[union-attr]
            batches=self.batches,
        )


@dataclass
class BlockAccumulator:
    """All running statistics of one block."""

    masks: dict[str, MaskAccumulator]
    ratio: RatioAccumulator

    @classmethod
    def empty(cls) -> BlockAccumulator:
        return cls(masks={}, ratio=RatioAccumulator())

    def update(self, x: torch.Tensor, out: torch.Tensor | None,
               masks: dict[str, torch.Tensor]) -> None:
        """Fold one forward pass of the block."""
        for name, mask in masks.items():
            self.masks.setdefault(name, MaskAccumulator()).update(mask)
        if out is not None and out.dim() >= 2 and x.dim() >= 2:
            self.ratio.update(x, out)

    def merge(self, other: BlockAccumulator) -> None:
        """Combine another run's statistics of the same block."""
        for name, acc in other.masks.items():
            if name in self.masks:
                self.masks[name].merge(acc)
            else:
                self.masks[name] = acc
        self.ratio.merge(other.ratio)
