"""Watch the masks while Ultralytics trains: callbacks on a `YOLO` model.

    from ultralytics import YOLO
    from coordatt_diag.integrations.ultralytics import watch_training

    model = YOLO("yolov8n-ca.yaml")
    watch_training(model, probe_images="data/images/val")
    model.train(data="data.yaml", epochs=100)

At the end of each training epoch (`on_fit_epoch_end`, after validation and saving) the trainer's
EMA model (`trainer.ema.ema`, the weights Ultralytics validates and saves), else the trained model,
is probed on the first `samples` probe images, letterboxed at the training's `imgsz`. The epoch
is the trainer's (from 0, as in its `epochN.pt` files). The log lines go to Ultralytics' logger,
the history and TensorBoard events to `<save_dir>/mask-health/` unless `log_dir` says otherwise.
With `stop_on="fail"` a failing probe sets `trainer.stop`, which Ultralytics shares with every DDP
rank before it ends the training as after its own early stopping (the last epoch is saved).
The final validation of `best.pt`, which calls `on_fit_epoch_end` once more, is not probed.

Ultralytics is never imported here: the callbacks read the trainer they are given.
Under Ultralytics' DDP the callbacks run on rank 0 only (`RANK` -1 or 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coordatt_diag.integrations.loop import MaskWatch
from coordatt_diag.runs.watch import DEFAULT_PROBE_SAMPLES, Probe

MASK_HEALTH_DIR = "mask-health"


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "-1"))
    except ValueError:
        return -1


def _ultralytics_log(line: str) -> None:
    from ultralytics.utils import LOGGER  # the trainer's logger: already imported by then

    LOGGER.info(line)


class UltralyticsWatch:
    """The callbacks `watch_training` adds; `watch` is the `MaskWatch`, made at the first probe."""

    def __init__(self, probe: Probe, *, log_dir: str | Path | None, every: int,
                 stop_on: str | None, samples: int, tensorboard: Any, kwargs: dict[str, Any]) -> None:
        self.probe = probe
        self.log_dir = log_dir
        self.every = every
        self.stop_on = stop_on
        self.samples = samples
        self.tensorboard = tensorboard
        self.kwargs = kwargs
        self.watch: MaskWatch | None = None
        self._in_epoch = False

    @staticmethod
    def model_of(trainer: Any) -> Any:
        """The model to probe: the EMA copy when the trainer keeps one, else the trained model."""
        ema = getattr(trainer, "ema", None)
        if ema is not None and getattr(ema, "ema", None) is not None:
            return ema.ema
        return trainer.model

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._in_epoch = True

    def on_fit_epoch_end(self, trainer: Any) -> None:
        # final_eval() calls on_fit_epoch_end once more, outside any epoch: not a new probe
        if not self._in_epoch or _rank() not in (-1, 0):
            return
        self._in_epoch = False
        if self.watch is None:
            log_dir = self.log_dir or Path(trainer.save_dir) / MASK_HEALTH_DIR
            kwargs = {"log": _ultralytics_log, **self.kwargs}
            self.watch = MaskWatch(None, self.probe, log_dir=log_dir, every=self.every,
                                   stop_on=self.stop_on, imgsz=int(trainer.args.imgsz),
                                   samples=self.samples, tensorboard=self.tensorboard, **kwargs)
        result = self.watch.step(int(trainer.epoch), model=self.model_of(trainer))
        if result is not None and result.stop:
            trainer.stop = True

    def on_train_end(self, trainer: Any) -> None:
        if self.watch is not None:
            self.watch.close()


def watch_training(model: Any, probe_images: Probe, *, log_dir: str | Path | None = None,
                   every: int = 1, stop_on: str | None = None,
                   samples: int = DEFAULT_PROBE_SAMPLES, tensorboard: Any = "auto",
                   **kwargs: Any) -> UltralyticsWatch:
    """Add the mask-watch callbacks to an Ultralytics `YOLO` model before `model.train(...)`.

    Args:
        model: the `ultralytics.YOLO` model (anything with `add_callback(event, fn)`).
        probe_images: an image folder or file (or tensors / a .pt file) to probe with.
        log_dir: where the history and TensorBoard events go (default `<save_dir>/mask-health`).
        every: probe every `every`-th epoch.
        stop_on: "fail" or "warn" ends the training when a probe reaches that status.
        samples: how many probe images to use.
        tensorboard: as `MaskWatch` ("auto": when the `tensorboard` package is installed).
        kwargs: further `MaskWatch` options (`blocks`, `config`, `histograms`, `log`, ...).

    Returns:
        The callbacks' holder; its `watch` (after the first epoch) has the latest result, the
        first epoch of each finding and `should_stop`.
    """
    callbacks = UltralyticsWatch(probe_images, log_dir=log_dir, every=every, stop_on=stop_on,
                                 samples=samples, tensorboard=tensorboard, kwargs=kwargs)
    model.add_callback("on_train_epoch_start", callbacks.on_train_epoch_start)
    model.add_callback("on_fit_epoch_end", callbacks.on_fit_epoch_end)
    model.add_callback("on_train_end", callbacks.on_train_end)
    return callbacks
