"""TensorBoard output of a mask watch: scalars and histograms per block and mask.

Per probe, at the probe's epoch (else its step, else its number) as the global step:

* `mask_health/<block>/<mask>/std` and `.../pos_std` (positional std, for positional masks),
  `mask_health/<block>/std_ratio`, and `mask_health/status` (0 ok, 1 warn, 2 fail);
* the seed blocks' monitor values (`r_ema`, `alpha_eff`, `T`, alphas, router mean shares, ...) as
  `mask_health/<block>/monitor/<part>/<entry>`;
* a histogram of each mask's values, `mask_health/<block>/<mask>`, from the report's 64-bin
  histogram over [0, 1] (`add_histogram_raw`: no mask is kept or recomputed).

`torch.utils.tensorboard` needs the `tensorboard` package; it is imported only when a writer is
made here (`TensorBoardSink.open`), and a given writer (a Lightning `TensorBoardLogger`'s
`experiment`, any object with `add_scalar` / `add_histogram_raw`) is used as it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from coordatt_diag.results import MaskStats, display_name
from coordatt_diag.runs.watch import ProbeResult

PREFIX = "mask_health"
_STATUS = {"ok": 0, "warn": 1, "fail": 2}


def available() -> bool:
    """Whether `torch.utils.tensorboard` can be imported (the `tensorboard` package is installed)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _tag(block: str) -> str:
    return display_name(block).replace(" ", "_")


def scalars(result: ProbeResult) -> dict[str, float]:
    """Tag -> value of every scalar one probe writes."""
    out: dict[str, float] = {f"{PREFIX}/status": float(_STATUS[result.report.summary.status])}
    for b in result.report.blocks:
        base = f"{PREFIX}/{_tag(b.name)}"
        for kind, m in b.masks.items():
            if m.std is not None:
                out[f"{base}/{kind}/std"] = m.std
            if m.pos_std is not None:
                out[f"{base}/{kind}/pos_std"] = m.pos_std
        if b.std_ratio is not None:
            out[f"{base}/std_ratio"] = b.std_ratio.mean
        parts = b.extra.get("monitor")
        if isinstance(parts, dict):
            for part, entries in parts.items():
                where = f"{base}/monitor/{part or 'block'}"
                for key, value in entries.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        out[f"{where}/{key}"] = float(value)
                    elif key == "router" and isinstance(value, dict):
                        for i, share in enumerate(value.get("mean", [])):
                            out[f"{where}/router_share_{i}"] = float(share)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def histogram(m: MaskStats) -> dict[str, Any] | None:
    """The arguments of `add_histogram_raw` for one mask (None when it has no finite value)."""
    if not m.count or m.min is None or m.max is None or m.mean is None:
        return None
    bins = len(m.hist)
    var = (m.std or 0.0) ** 2 * (m.count - 1) if m.count > 1 else 0.0
    return {
        "min": m.min, "max": m.max, "num": m.count, "sum": m.mean * m.count,
        "sum_squares": var + m.count * m.mean ** 2,
        "bucket_limits": [(i + 1) / bins for i in range(bins)],
        "bucket_counts": [int(c) for c in m.hist],
    }


class TensorBoardSink:
    """A watch sink writing each probe to a TensorBoard `SummaryWriter` (or a compatible writer).

    Args:
        writer: the writer to use (kept open on close unless this sink made it).
        histograms: also write a histogram per mask.
    """

    def __init__(self, writer: Any, histograms: bool = True, owned: bool = False) -> None:
        self.writer = writer
        self.histograms = histograms
        self._owned = owned

    @classmethod
    def open(cls, log_dir: Path, histograms: bool = True) -> TensorBoardSink:
        """A sink with its own `SummaryWriter` on `log_dir` (raises ImportError without the
        `tensorboard` package)."""
        from torch.utils.tensorboard import SummaryWriter

        return cls(SummaryWriter(log_dir=str(log_dir)), histograms, owned=True)

    def write(self, result: ProbeResult) -> None:
        t = result.time
        step = t.epoch if t.epoch is not None else t.step if t.step is not None else t.probe
        for tag, value in scalars(result).items():
            self.writer.add_scalar(tag, value, step)
        if self.histograms:
            for b in result.report.blocks:
                for kind, m in b.masks.items():
                    args = histogram(m)
                    if args is not None:
                        self.writer.add_histogram_raw(f"{PREFIX}/{_tag(b.name)}/{kind}",
                                                      global_step=step, **args)
        self.writer.flush()

    def close(self) -> None:
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()
