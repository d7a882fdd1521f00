"""Watch the masks while Lightning trains: the `MaskHealth` callback.

    from lightning.pytorch import Trainer
    from coordatt_diag.integrations.lightning import MaskHealth

    trainer = Trainer(callbacks=[MaskHealth(probe=probe_batch)])
    trainer.fit(module, datamodule)

At the end of each training epoch (`on_train_epoch_end`) the `LightningModule` is probed on the
probe batch (moved to the module's device). The epoch is `trainer.current_epoch` (from 0) and the
step `trainer.global_step`. The log lines go through `LightningModule.print` (rank 0 only), the
history to `<trainer.log_dir>/mask-health/`, and the scalars and histograms to the trainer's
TensorBoard logger when it has one (else to a writer of their own when `tensorboard` is
installed). Under DDP only global rank 0 probes and writes; with `stop_on` every rank takes part
in `trainer.strategy.reduce_boolean_decision`, so all of them set `trainer.should_stop` together,
the way Lightning's own `EarlyStopping` ends a run.

Importing this module imports Lightning (`lightning.pytorch`, else `pytorch_lightning`): the
callback must subclass the `Callback` of the package the `Trainer` comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordatt_diag.integrations.loop import MaskWatch
from coordatt_diag.runs.watch import Probe

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

MASK_HEALTH_DIR = "mask-health"


def _tensorboard_writer(trainer: Any) -> Any:
    """The `SummaryWriter` of the trainer's TensorBoard logger, if it has one."""
    for logger in getattr(trainer, "loggers", None) or []:
        if type(logger).__name__ == "TensorBoardLogger":
            return logger.experiment
    return None


class MaskHealth(Callback):  # type: ignore[misc]
    """A Lightning callback that watches the module's attention masks during `fit`.

    Args:
        probe: a batch (N, C, H, W), a list of batches, or an image folder / tensors file.
        log_dir: where the history (and TensorBoard events of its own) go (default:
            `<trainer.log_dir>/mask-health`).
        every_n_epochs: probe every n-th epoch.
        stop_on: "fail" or "warn" stops the training when a probe reaches that status.
        tensorboard: "auto" (the trainer's TensorBoard logger, else a writer of its own when
            `tensorboard` is installed), a writer, or False.
        kwargs: further `MaskWatch` options (`blocks`, `config`, `histograms`, `log`, ...).

    Attributes:
        watch: the `MaskWatch` (on rank 0, from the start of `fit`).
    """

    def __init__(self, probe: Probe, *, log_dir: str | Path | None = None, every_n_epochs: int = 1,
                 stop_on: str | None = None, tensorboard: Any = "auto", **kwargs: Any) -> None:
        super().__init__()
        self.probe = probe
        self.log_dir = log_dir
        self.every_n_epochs = every_n_epochs
        self.stop_on = stop_on
        self.tensorboard = tensorboard
        self.kwargs = kwargs
        self.watch: MaskWatch | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero or self.watch is not None:
            return
        root = trainer.log_dir or trainer.default_root_dir
        log_dir = self.log_dir or Path(root) / MASK_HEALTH_DIR
        tensorboard = self.tensorboard
        if tensorboard == "auto":
            tensorboard = _tensorboard_writer(trainer) or "auto"
        kwargs = {"log": pl_module.print, **self.kwargs}
        self.watch = MaskWatch(pl_module, self.probe, log_dir=log_dir, every=self.every_n_epochs,
                               stop_on=self.stop_on, tensorboard=tensorboard, **kwargs)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        result = None
        if trainer.is_global_zero and self.watch is not None:
            result = self.watch.step(int(trainer.current_epoch), step=int(trainer.global_step),
                                     model=pl_module)
        if self.stop_on is not None:
            stop = trainer.strategy.reduce_boolean_decision(bool(result is not None and result.stop),
                                                            all=False)
            if stop:
                trainer.should_stop = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None:
            self.watch.close()
