"""Streaming statistics of masks and std ratios.

Each batch is reduced, on the model's device and without Python loops over values, to a few
numbers per mask (a `_Raw` on a CPU: the passes over the mask and nothing else; a `_Part`
elsewhere); masks are never kept. Batches are folded together every `FOLD_EVERY` batches (one
set of small stacked operations instead of one per batch: on a CPU the cost of a statistic is
mostly the number of tensor operations), so memory stays bounded whatever the number of
batches. The std ratio keeps each batch's per-sample moments the same way. On a CPU one small
range check per batch goes to the host (it lets a healthy mask skip the tail comparisons); on an
accelerator nothing leaves the device until `finalize()`, so the device's queue never waits for
the statistics. Accumulators merge (`merge`), so two halves of a run give the same result as the
whole run, to float tolerance: means and variances are combined with Chan et al.'s parallel
formula, counts and sums add, minima and maxima combine.

Definitions (the README's "Statistics" section repeats them):

* `std`: unbiased std over every finite value of every batch (for one batch, the seed's
  `last_mask_stats()["a_h"]["std"]`, which is `torch.std`);
* `sat_low` / `sat_high`: share of values <= 0.01 / >= 0.99; `exact01`: share exactly 0 or 1;
* `pos_std`: for each sample and channel, the population std of the mask along its positional
  axes (H for a_h, W for a_w, H*W for a_hw and spatial), averaged over samples and channels;
* `chan_std`: population std across channels of each channel's mean value;
* `sample_std`: for each channel, the population std over samples of the channel's mean over
  positions, averaged over channels: how much the mask follows the input (0: the same mask for
  every input, a learnt constant scale);
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
FOLD_EVERY = 32

_F64 = torch.float64


@dataclass
class _Part:
    """One batch of one mask, or many folded together: what a merge needs.

    `scal` holds [mean, m2 (sum of squared deviations), min, max, pos_sum (sum over rows of the
    per-row positional std)]; `counts` holds [<= 0.01, >= 0.99, exactly 0 or 1, non-finite].
    """

    n: int | torch.Tensor  # a tensor where counting would need a host transfer
    scal: torch.Tensor
    counts: torch.Tensor
    hist: torch.Tensor
    pos_rows: int | torch.Tensor
    sum_h: torch.Tensor | None  # (C, H): sums over samples and W (taken by the accumulator)
    sum_w: torch.Tensor | None  # (C, W): sums over samples and H
    # (2, C): sums over samples of the per-sample channel means and of their squares (float64)
    sq_c: torch.Tensor | None
    samples: int
    shape: tuple[int, int, int]


@dataclass
class _Raw:
    """One batch of one mask on the host path, reduced to what a fold needs and no more.

    `sums` holds [sum of row means, sum of row deviation norms] and `gram` the 2x2 products of
    the same two vectors (float64, a few numbers): the mean, variance and positional std follow
    at fold time, for many batches at once. A row is one sample and channel along the mask's
    positions. `sum_h` / `sum_w` / `sq_c` are taken by the accumulator as soon as it gets the batch.
    """

    rows: int
    length: int
    sums: torch.Tensor
    gram: torch.Tensor
    lo: float
    hi: float
    counts: torch.Tensor | None  # [<= 0.01, >= 0.99, exactly 0 or 1] (int64); None: all 0
    hist: torch.Tensor  # 65 counts: the 64 bins, then the values equal to 1.0
    sum_h: torch.Tensor | None
    sum_w: torch.Tensor | None
    sq_c: torch.Tensor | None
    samples: int
    shape: tuple[int, int, int]


def _raw_part(mask: torch.Tensor) -> _Raw | _Part:
    """One batch of a mask: a `_Raw` on the host path, else (accelerator, non-finite values) the
    full `_Part` of `_masked_part`.

    Each statistic comes from as few passes over the mask as the CPU allows: one for the range
    (`aminmax`, which also says whether every value is finite), one for the row means, two for
    the deviations from them (their norms give the positional std and, with the spread of the
    row means, the variance: law of total variance), two for the histogram, one or two for the
    axis sums; the tail comparisons only when the range reaches a tail. Everything else works on
    vectors of one value per row.
    """
    m = mask.detach()
    if m.dtype not in (torch.float32, _F64):
        m = m.float()
    if m.device.type != "cpu":
        return _masked_part(m)
    b, c, h, w = m.shape
    length = h * w
    lo_t, hi_t = torch.aminmax(m)
    lo_v, hi_v = lo_t.item(), hi_t.item()  # the one host transfer (NaN and inf show here)
    if not (math.isfinite(lo_v) and math.isfinite(hi_v)):
        return _masked_part(m)
    rows = m.reshape(b * c, length)
    if length > 1:
        # a product with a vector of ones: several times faster than a sum along short rows
        ones = rows.new_ones(length)
        row_mean = torch.mv(rows, ones).div_(length)
        dev = rows - row_mean.unsqueeze(1)
        norms = torch.mv(dev.mul_(dev), ones).sqrt_()
        vecs = torch.stack([row_mean, norms]).to(_F64)
    else:
        row_mean = rows.reshape(-1)
        vecs = torch.stack([row_mean, torch.zeros_like(row_mean)]).to(_F64)
    gram = vecs @ vecs.T
    sums = vecs.sum(dim=1)
    flat = m.reshape(-1)
    if lo_v >= 0.0 and hi_v <= 1.0:
        # bin k holds [k/64, (k+1)/64) and 1.0 joins the last, as in torch.histc over [0, 1]:
        # x * 64 is exact in binary floating point, and this costs a tenth of histc; codes
        # 0..64 fit uint8, whose bincount is three times faster than int32's on a CPU
        # (1.0 lands in code 64, folded into the last bin when batches are folded)
        hist = torch.bincount((flat * HIST_BINS).to(torch.uint8), minlength=HIST_BINS + 1)
    else:
        hist = torch.cat([torch.histc(flat, bins=HIST_BINS, min=0.0, max=1.0).to(torch.int64),
                          torch.zeros(1, dtype=torch.int64)])
    # the range, already on the host, says which tails can hold values at all: a healthy mask
    # skips every comparison
    if lo_v <= SAT_LOW or hi_v >= SAT_HIGH:
        zero = torch.zeros((), dtype=torch.int64, device=m.device)
        counts = torch.stack([
            torch.count_nonzero(flat <= SAT_LOW) if lo_v <= SAT_LOW else zero,
            torch.count_nonzero(flat >= SAT_HIGH) if hi_v >= SAT_HIGH else zero,
            (torch.count_nonzero(flat == 0) if lo_v <= 0.0 else zero)
            + (torch.count_nonzero(flat == 1) if hi_v >= 1.0 else zero),
        ])
    else:
        counts = None
    # one pass over the mask when one axis is 1 (a_h, a_w, channel masks): the other sum follows
    if h == 1:
        sum_w = m.sum(dim=(0, 2))
        sum_h = sum_w.sum(dim=1, keepdim=True)
    else:
        sum_h = m.sum(dim=(0, 3))
        sum_w = sum_h.sum(dim=1, keepdim=True) if w == 1 else m.sum(dim=(0, 2))
    # per channel, the sums over samples of the per-sample means and of their squares, in
    # float64 from the row means (the sample std is their difference: float32 axis sums would
    # leave it rounding noise below about 1e-4)
    sq_c = _channel_sums(vecs[0].view(b, c))
    return _Raw(rows=b * c, length=length, sums=sums, gram=gram, lo=lo_v, hi=hi_v,
                counts=counts, hist=hist, sum_h=sum_h, sum_w=sum_w, sq_c=sq_c, samples=b,
                shape=(c, h, w))


def _fold_raws(raws: list[_Raw]) -> _Part:
    """Many host-path batches of one shape as one `_Part` (a few stacked operations)."""
    first = raws[0]
    sums = torch.stack([r.sums for r in raws])  # (P, 2)
    gram = torch.stack([r.gram for r in raws])  # (P, 2, 2)
    rows = torch.tensor([r.rows for r in raws], dtype=_F64)
    length = torch.tensor([r.length for r in raws], dtype=_F64)
    n = rows * length
    total = n.sum()
    part_mean = sums[:, 0] / rows
    mean = (sums[:, 0] * length).sum() / total
    # per batch: length * (spread of the row means) + the rows' own squared deviations
    inner = length * (gram[:, 0, 0] - sums[:, 0] * part_mean) + gram[:, 1, 1]
    spread = part_mean - mean
    m2 = inner.clamp(min=0).sum() + (n * spread * spread).sum()
    pos_sum = (sums[:, 1] / length.sqrt()).sum()
    lo = min(r.lo for r in raws)
    hi = max(r.hi for r in raws)
    scal = torch.stack([mean, m2, torch.tensor(lo, dtype=_F64), torch.tensor(hi, dtype=_F64),
                        pos_sum])
    # out of place throughout: a fold may run outside inference mode on a run's tensors
    tails = [r.counts for r in raws if r.counts is not None]
    zero = torch.zeros(1, dtype=torch.int64)
    counts = (torch.cat([torch.stack(tails).sum(dim=0), zero]) if tails
              else torch.zeros(4, dtype=torch.int64))
    codes = torch.stack([r.hist for r in raws]).sum(dim=0)
    hist = torch.cat([codes[:HIST_BINS - 1], codes[HIST_BINS - 1:].sum(dim=0, keepdim=True)])
    pos_rows = sum(r.rows for r in raws if r.length > 1)
    return _Part(
        n=sum(r.rows * r.length for r in raws), scal=scal, counts=counts, hist=hist,
        pos_rows=pos_rows, sum_h=None, sum_w=None, sq_c=None,
        samples=sum(r.samples for r in raws), shape=first.shape,
    )


def _batch_part(mask: torch.Tensor) -> _Part:
    """One batch of a mask as a `_Part` (with its axis sums): `_raw_part`, folded."""
    raw = _raw_part(mask)
    if isinstance(raw, _Part):
        return raw
    part = _fold_raws([raw])
    part.sum_h, part.sum_w = raw.sum_h, raw.sum_w
    part.sq_c = raw.sq_c
    return part


def _masked_part(m: torch.Tensor) -> _Part:
    """Every statistic over the finite values only, without a host transfer.

    Used for a batch holding NaN or inf, and for every batch on an accelerator, where a host
    transfer per batch would stall the device's queue: counts stay tensors until `finalize()`.
    """
    b, c, h, w = m.shape
    length = h * w
    dev_ = m.device
    finite = torch.isfinite(m)
    v = torch.where(finite, m, torch.zeros((), dtype=m.dtype, device=dev_))
    n = finite.sum()
    mean = v.sum(dtype=_F64) / n.clamp(min=1)
    dev = torch.where(finite, m - mean.to(m.dtype), torch.zeros((), dtype=m.dtype, device=dev_))
    m2 = (dev * dev).sum(dtype=_F64)
    inf = torch.tensor(math.inf, dtype=m.dtype, device=dev_)
    lo = torch.where(finite, m, inf).amin().to(_F64)
    hi = torch.where(finite, m, -inf).amax().to(_F64)
    if length > 1:
        # rows holding a non-finite value are left out of the positional std
        rows = v.reshape(b * c, length)
        row_ok = finite.reshape(b * c, length).all(dim=1)
        norms = torch.linalg.vector_norm(rows - rows.mean(dim=1, keepdim=True), dim=1)
        pos_sum = torch.where(row_ok, norms, torch.zeros_like(norms)).sum(dtype=_F64)
        pos_sum = pos_sum / math.sqrt(length)
        pos_rows: int | torch.Tensor = row_ok.sum()
    else:
        pos_sum = torch.zeros((), dtype=_F64, device=dev_)
        pos_rows = 0
    # non-finite values sit at a neutral 0.5 for the tail counts and out of range for histc
    neutral = torch.where(finite, m, torch.full((), 0.5, dtype=m.dtype, device=dev_))
    counts = torch.stack([
        (neutral <= SAT_LOW).sum(), (neutral >= SAT_HIGH).sum(),
        ((neutral == 0) | (neutral == 1)).sum(), (~finite).sum(),
    ])
    outside = torch.where(finite, m, torch.full((), -1.0, dtype=m.dtype, device=dev_))
    return _Part(
        n=n, scal=torch.stack([mean, m2, lo, hi, pos_sum]),
        counts=counts,
        hist=torch.histc(outside, bins=HIST_BINS, min=0.0, max=1.0).to(torch.int64),
        pos_rows=pos_rows, sum_h=v.sum(dim=(0, 3), dtype=_F64), sum_w=v.sum(dim=(0, 2), dtype=_F64),
        sq_c=_channel_sums(v.reshape(b, c, length).mean(dim=2, dtype=_F64)),
        samples=b, shape=(c, h, w),
    )


def _channel_sums(means: torch.Tensor) -> torch.Tensor:
    """(2, C): the per-sample channel means (B, C) summed over samples, and their squares."""
    return torch.stack([means.sum(dim=0), means.square().sum(dim=0)])


def _combine(parts: list[_Part]) -> _Part:
    """Fold parts into one (Chan et al.'s parallel mean and variance)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    dev = first.scal.device
    scal = torch.stack([p.scal.to(device=dev, dtype=_F64) for p in parts])
    ns = torch.stack([torch.as_tensor(p.n, dtype=_F64, device=dev) for p in parts])
    total = ns.sum()
    mean = (ns * scal[:, 0]).sum() / total.clamp(min=1)
    spread = scal[:, 0] - mean
    m2 = scal[:, 1].sum() + (ns * spread * spread).sum()
    # a part without finite values has no min/max: leave it out
    has = ns > 0
    inf = torch.tensor(math.inf, dtype=_F64, device=dev)
    lo = torch.where(has, scal[:, 2], inf).min()
    hi = torch.where(has, scal[:, 3], -inf).max()
    return _Part(
        n=total.to(torch.int64),
        scal=torch.stack([mean, m2, lo, hi, scal[:, 4].sum()]),
        counts=torch.stack([p.counts.to(dev) for p in parts]).sum(dim=0),
        hist=torch.stack([p.hist.to(dev) for p in parts]).sum(dim=0),
        pos_rows=torch.stack([torch.as_tensor(p.pos_rows, dtype=torch.int64, device=dev)
                              for p in parts]).sum(),
        sum_h=None,
        sum_w=None,
        sq_c=None,
        samples=sum(p.samples for p in parts),
        shape=first.shape,
    )


class MaskAccumulator:
    """Running statistics of one mask (canonical 4-D layout (B, C, H, W)).

    Example:
        >>> acc = MaskAccumulator()
        >>> acc.update(torch.rand(8, 16, 7, 1))
        >>> acc.finalize().std
    """

    def __init__(self) -> None:
        self._folded: _Part | None = None
        self._pending: list[_Part] = []
        self._raws: list[_Raw] = []  # host-path batches, folded together every FOLD_EVERY
        # the (C, H) and (C, W) sums are added up at once, so pending parts stay a few numbers
        self._sum_h: torch.Tensor | None = None
        self._sum_w: torch.Tensor | None = None
        self._sq_c: torch.Tensor | None = None
        self._shape: tuple[int, int, int] | None = None  # of the first batch
        self.shape_varied = False

    def update(self, mask: torch.Tensor) -> None:
        """Fold one batch of this mask, (B, C, H, W), into the statistics."""
        raw = _raw_part(mask)
        if isinstance(raw, _Part):
            self._add(raw)
            return
        self._take(raw.shape, raw.sum_h, raw.sum_w, raw.sq_c)
        raw.sum_h = raw.sum_w = raw.sq_c = None
        self._raws.append(raw)
        if len(self._raws) + len(self._pending) >= FOLD_EVERY:
            self._fold()

    def _take(self, shape: tuple[int, int, int], sum_h: torch.Tensor | None,
              sum_w: torch.Tensor | None, sq_c: torch.Tensor | None) -> None:
        """Add one batch's axis sums to the running ones."""
        if self._shape is None:
            self._shape = shape
            if sum_h is not None and sum_w is not None:
                self._sum_h = sum_h.to(_F64, copy=True)
                self._sum_w = sum_w.to(_F64, copy=True)
                self._sq_c = None if sq_c is None else sq_c.to(_F64, copy=True)
            return
        if shape != self._shape or sum_h is None or sum_w is None:
            self.shape_varied = True
        if not self.shape_varied and self._sum_h is not None:
            # out of place: a state may mix inference tensors (from a run) and normal ones
            self._sum_h = self._sum_h + sum_h  # type: ignore[operator]
            self._sum_w = self._sum_w + sum_w  # type: ignore[operator]
            if self._sq_c is not None and sq_c is not None:
                self._sq_c = self._sq_c + sq_c
            else:
                self._sq_c = None

    def _add(self, part: _Part) -> None:
        self._take(part.shape, part.sum_h, part.sum_w, part.sq_c)
        part.sum_h = part.sum_w = part.sq_c = None
        self._pending.append(part)
        if len(self._raws) + len(self._pending) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> _Part | None:
        parts = ([self._folded] if self._folded is not None else []) + self._pending
        group: list[_Raw] = []
        for raw in self._raws:  # runs of one shape fold together
            if group and raw.shape != group[0].shape:
                parts.append(_fold_raws(group))
                group = []
            group.append(raw)
        if group:
            parts.append(_fold_raws(group))
        self._pending, self._raws = [], []
        self._folded = _combine(parts) if parts else None
        return self._folded

    def merge(self, other: MaskAccumulator) -> None:
        """Combine `other` (the statistics of other batches) into this accumulator."""
        part = other._fold()
        if part is None:
            return
        self.shape_varied = self.shape_varied or other.shape_varied or other._sum_h is None
        part.sum_h, part.sum_w, part.sq_c = other._sum_h, other._sum_w, other._sq_c
        self._add(part)
        self._fold()

    def state(self) -> dict[str, torch.Tensor]:
        """The accumulator as named tensors, e.g. for collectives across processes."""
        part = self._fold()
        if part is None:
            raise ValueError("empty accumulator")
        return {"scal": part.scal, "counts": part.counts, "hist": part.hist,
                **({"sum_h": self._sum_h} if self._sum_h is not None else {}),
                **({"sum_w": self._sum_w} if self._sum_w is not None else {}),
                **({"sq_c": self._sq_c} if self._sq_c is not None else {})}

    def finalize(self) -> MaskStats:
        """Move the statistics to the host (one transfer per tensor) and freeze them."""
        part = self._fold()
        if part is None:
            raise ValueError("no batch was seen")
        mean, m2, lo, hi, pos_sum = part.scal.tolist()
        low, high, exact, nonfinite = part.counts.tolist()
        n, pos_rows = int(part.n), int(part.pos_rows)
        total = max(n, 1)
        c, h, w = part.shape
        chan_std = sample_std = None
        prof_h = prof_w = None
        if self._sum_h is not None and self._sum_w is not None and not self.shape_varied:
            per_ch_h = self._sum_h / (part.samples * w)  # (C, H) mean per channel and row
            per_ch_w = self._sum_w / (part.samples * h)
            if self._sq_c is not None and part.samples > 0 and not nonfinite:
                ch_mean, ch_sq = self._sq_c / part.samples
                var = (ch_sq - ch_mean * ch_mean).clamp(min=0)
                sample_std = float(var.sqrt().mean().item())
            if c > 1:
                chan_std = float(per_ch_h.mean(dim=1).std(correction=0).item())
            if h > 1:
                prof_h = _profile(per_ch_h)
            if w > 1:
                prof_w = _profile(per_ch_w)
        return MaskStats(
            count=n,
            min=lo if n else None,
            max=hi if n else None,
            mean=mean if n else None,
            std=math.sqrt(max(m2, 0.0) / (n - 1)) if n > 1 else None,
            sat_low=int(low) / total,
            sat_high=int(high) / total,
            exact01=int(exact) / total,
            nonfinite=int(nonfinite),
            pos_std=pos_sum / pos_rows if h * w > 1 and pos_rows > 0 else None,
            chan_std=chan_std,
            hist=[int(x) for x in part.hist.tolist()],
            shape=[c, h, w],
            profile_h=prof_h,
            profile_w=prof_w,
            sample_std=sample_std,
        )


def _profile(per_channel: torch.Tensor) -> AxisProfile:
    return AxisProfile(
        mean=[float(x) for x in per_channel.mean(dim=0).tolist()],
        spread=[float(x) for x in per_channel.std(dim=0, correction=0).tolist()],
    )


def sample_moments(t: torch.Tensor) -> torch.Tensor:
    """[sum, L2 norm] over C*H*W of each sample, shape (2, B), float32.

    Two single-read reductions (where `std` reads the tensor twice); `std_from_moments` turns
    them into the population std, in float64, where the cancellation is harmless.
    """
    flat = t.detach().reshape(t.shape[0], -1)
    if flat.dtype not in (torch.float32, _F64):
        flat = flat.float()
    return torch.stack([flat.sum(dim=1), torch.linalg.vector_norm(flat, dim=1)])


def std_from_moments(moments: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """Population std of each sample from `sample_moments`, shape (B,), float64 (`n`: the values
    per sample, one number or one per sample)."""
    m = moments.to(_F64) / n
    return (m[1] * m[1] * n - m[0] * m[0]).clamp(min=0).sqrt()


def std_per_sample(t: torch.Tensor) -> torch.Tensor:
    """Population std over C*H*W of each sample, shape (B,), in float64."""
    return std_from_moments(sample_moments(t), t[0].numel())


class RatioAccumulator:
    """Running std ratio of a block (sample-weighted mean and minimum over batches).

    Per batch only the two tensors' per-sample moments are kept (four numbers a sample); the
    ratios follow every FOLD_EVERY batches, for all of them at once.
    """

    def __init__(self) -> None:
        # per batch: (input moments, input values per sample, output moments, output values)
        self._batches: list[tuple[torch.Tensor, int, torch.Tensor, int]] = []
        self.weighted: torch.Tensor | None = None
        self.min: torch.Tensor | None = None
        self.samples = 0
        self.batches = 0

    def update(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Fold one batch: the seed's r_out_pre = mean_i std(out_i) / mean_i std(x_i)."""
        self.update_moments(sample_moments(x), x[0].numel(), out)

    def update_moments(self, x_moments: torch.Tensor, x_n: int, out: torch.Tensor,
                       out_moments: torch.Tensor | None = None) -> None:
        """`update` with the input's moments taken before the block ran (it may change x), and
        the output's when already taken (`sample_moments(out)`)."""
        if out.dim() < 2 or out.shape[0] != x_moments.shape[1]:
            return
        if out_moments is None:
            out_moments = sample_moments(out)
        self.add(x_moments, x_n, out_moments, out[0].numel())

    def add(self, x_moments: torch.Tensor, x_n: int, out_moments: torch.Tensor,
            out_n: int) -> None:
        """Fold one batch given by its moments alone (`sample_moments` of the input and of the
        output, (2, B) each, and their values per sample)."""
        if x_moments.shape[1] != out_moments.shape[1]:
            return
        self._batches.append((x_moments, x_n, out_moments, out_n))
        if len(self._batches) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self._batches:
            return
        batches, self._batches = self._batches, []
        sizes = [int(xm.shape[1]) for xm, _, _, _ in batches]
        dev = batches[0][0].device
        xm = torch.cat([b[0] for b in batches], dim=1).to(_F64)  # (2, samples)
        om = torch.cat([b[2] for b in batches], dim=1).to(_F64)
        xn = torch.tensor([b[1] for b in batches], dtype=_F64, device=dev).repeat_interleave(
            torch.tensor(sizes, device=dev))
        on = torch.tensor([b[3] for b in batches], dtype=_F64, device=dev).repeat_interleave(
            torch.tensor(sizes, device=dev))
        index = torch.arange(len(sizes), device=dev).repeat_interleave(
            torch.tensor(sizes, device=dev))
        counts = torch.tensor(sizes, dtype=_F64, device=dev)

        def batch_mean_std(m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            std = std_from_moments(m, n)
            total = torch.zeros(len(sizes), dtype=_F64, device=dev).index_add_(0, index, std)
            return total / counts

        rs = batch_mean_std(om, on) / batch_mean_std(xm, xn).clamp(min=1e-12)
        weighted, lo = (rs * counts).sum(), rs.min()
        self.weighted = weighted if self.weighted is None else self.weighted + weighted
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.samples += sum(sizes)
        self.batches += len(sizes)

    def merge(self, other: RatioAccumulator) -> None:
        """Combine the batches of `other` into this accumulator."""
        other._fold()
        self._fold()
        if other.weighted is None or other.min is None:
            return
        dev = other.weighted.device if self.weighted is None else self.weighted.device
        self.weighted = other.weighted.to(dev) + (0 if self.weighted is None else self.weighted)
        self.min = other.min.to(dev) if self.min is None else torch.minimum(self.min,
                                                                            other.min.to(dev))
        self.samples += other.samples
        self.batches += other.batches

    def finalize(self) -> StdRatio | None:
        """The frozen std ratio, None when no batch was measured."""
        self._fold()
        if self.weighted is None or self.min is None or self.samples == 0:
            return None
        return StdRatio(mean=float(self.weighted.item()) / self.samples,
                        min=float(self.min.item()), batches=self.batches)


@dataclass
class BlockAccumulator:
    """All running statistics of one block."""

    masks: dict[str, MaskAccumulator]
    ratio: RatioAccumulator

    @classmethod
    def empty(cls) -> BlockAccumulator:
        return cls(masks={}, ratio=RatioAccumulator())

    def update(self, x: torch.Tensor, out: torch.Tensor | None,
               masks: dict[str, torch.Tensor], x_moments: torch.Tensor | None = None,
               out_moments: torch.Tensor | None = None) -> None:
        """Fold one forward pass of the block (`x_moments`: the input's, taken on entry;
        `out_moments`: the output's, when the caller took them already)."""
        for name, mask in masks.items():
            self.masks.setdefault(name, MaskAccumulator()).update(mask)
        if out is not None and out.dim() >= 2 and x.dim() >= 2:
            moments = x_moments if x_moments is not None else sample_moments(x)
            self.ratio.update_moments(moments, x[0].numel(), out, out_moments)

    def merge(self, other: BlockAccumulator) -> None:
        """Combine another run's statistics of the same block."""
        for name, acc in other.masks.items():
            if name in self.masks:
                self.masks[name].merge(acc)
            else:
                self.masks[name] = acc
        self.ratio.merge(other.ratio)
