"""`MaskWatch` for a plain training loop: the watch (`coordatt_diag.runs.watch`) with its outputs.

    watch = MaskWatch(model, probe=probe_batch, log_dir="runs/exp/mask-health")
    for epoch in range(epochs):
        train_one_epoch(...)
        if watch.step(epoch) and watch.should_stop:   # stop_on="fail" asked for it
            break
    watch.close()

Outputs: log lines when something changes (`coordatt_diag.reports.watch.LogLines`), the JSON-lines
history `log_dir/history.jsonl` (`HistoryWriter`), and TensorBoard scalars and histograms in
`log_dir` when the `tensorboard` package is installed (`coordatt_diag.integrations.tensorboard`).
The Ultralytics and Lightning integrations build one of these.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from coordatt_diag.health.thresholds import ThresholdConfig
from coordatt_diag.reports.watch import HistoryWriter, LogLines
from coordatt_diag.runs.watch import DEFAULT_BUDGET, DEFAULT_PROBE_SAMPLES, Probe, Watch, WatchSink


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class MaskWatch(Watch):
    """Watch a training model's attention masks on a fixed probe batch.

    Args:
        model: the model being trained.
        probe: a batch (N, C, H, W), a list of batches, or an image folder / .pt / .npy file.
        log_dir: folder of the history (`history.jsonl`) and the TensorBoard events; None: no
            files (log lines only).
        every: probe on every `every`-th call of `step`.
        stop_on: "fail" or "warn" asks the training to stop when a probe reaches that status
            (`step(...).stop`, `should_stop`); None (default) never.
        log: where the log lines go (default: stderr); None for no lines.
        tensorboard: "auto" (when `tensorboard` is installed and `log_dir` is set), True (required),
            False, or a `SummaryWriter`-like object to write to.
        histograms: TensorBoard histograms of the masks too.
        blocks, config, imgsz, normalize, samples, device: as `coordatt_diag.runs.watch.Watch`
            (`--blocks`, `--config`, and how a probe path is read).
        sinks: further outputs.
        budget: the largest share of the training's time the probes may take (default 0.01); a
            probe that would exceed it is skipped. None: probe on every `every`-th step.
    """

    def __init__(
        self,
        model: nn.Module | None,
        probe: Probe,
        *,
        log_dir: str | Path | None = None,
        every: int = 1,
        stop_on: str | None = None,
        log: Callable[[str], object] | None | str = "stderr",
        tensorboard: bool | str | Any = "auto",
        histograms: bool = True,
        blocks: str | None = None,
        config: Path | str | ThresholdConfig | None = None,
        imgsz: int | None = None,
        normalize: str = "unit",
        samples: int = DEFAULT_PROBE_SAMPLES,
        device: Any = None,
        sinks: Sequence[WatchSink] = (),
        budget: float | None = DEFAULT_BUDGET,
    ) -> None:
        from coordatt_diag.errors import UsageError
        from coordatt_diag.integrations import tensorboard as tb

        outputs: list[WatchSink] = []
        if log == "stderr":
            log = _stderr
        if log is not None:
            if not callable(log):
                raise UsageError("log must be a function taking a line, 'stderr' or None")
            outputs.append(LogLines(log, stop_on))
        self.log_dir = Path(log_dir) if log_dir is not None else None
        if self.log_dir is not None:
            outputs.append(HistoryWriter(self.log_dir))
        if tensorboard is True or tensorboard == "auto":
            if self.log_dir is None:
                if tensorboard is True:
                    raise UsageError("tensorboard=True needs a log_dir")
            elif tensorboard is True or tb.available():
                outputs.append(tb.TensorBoardSink.open(self.log_dir, histograms))
        elif tensorboard is not False and tensorboard is not None:
            outputs.append(tb.TensorBoardSink(tensorboard, histograms))
        super().__init__(model, probe, every=every, blocks=blocks, config=config,
                         stop_on=stop_on, sinks=[*outputs, *sinks], imgsz=imgsz,
                         normalize=normalize, samples=samples, device=device, budget=budget)

    @property
    def history(self) -> Path | None:
        """The JSON-lines history file (None without a log_dir)."""
        return self.log_dir / "history.jsonl" if self.log_dir is not None else None
