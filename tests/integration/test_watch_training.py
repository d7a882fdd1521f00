"""The mask watch inside real trainings: Ultralytics (`watch_training`) and Lightning (`MaskHealth`).

Run in the integration venv:

    PYTHONPATH=$PWD "$VENV/bin/python" -m pytest -q -m integration tests/integration/test_watch_training.py

Ultralytics trains a tiny YOLO built from a YAML (no weights, no download) with the user-written
`custom_blocks.CoordAtt` on a generated dataset in tmp (make_checkpoints.make_dataset), 2 epochs,
imgsz 64, on the CPU; Lightning fits the digits demo net on random tensors. Both must write the
JSON-lines history, the TensorBoard scalars and histograms, and the log lines; `stop_on` must end
each training through the framework's own stop flag. The `tensorboard` package is not in the
integration venv: the TensorBoard path is tested with a recording writer (`FakeWriter`), the
writer the sink would otherwise make for itself; with `tensorboard` installed the event files are
checked too.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

if not all(importlib.util.find_spec(p) for p in ("ultralytics", "lightning")):
    pytest.skip("needs the integration venv (scripts/integration-env.sh): ultralytics, lightning",
                allow_module_level=True)

# every mask near-constant: each probe warns (or fails), so stop_on="warn" stops at the first one
STOP_CONFIG = "near_constant_warn = 1.0\nnear_constant_mean_low = 0.0\nnear_constant_mean_high = 1.0\n"


class FakeWriter:
    """Records `add_scalar` / `add_histogram_raw` calls as a `SummaryWriter` would get them."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.histograms: dict[str, list[dict[str, Any]]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append((step, value))

    def add_histogram_raw(self, tag: str, global_step: int, **kw: Any) -> None:
        self.histograms.setdefault(tag, []).append({"step": global_step, **kw})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Recorder:
    """A watch sink keeping every probe's result."""

    def __init__(self) -> None:
        self.results: list[Any] = []

    def write(self, result: Any) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass


def _history(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_tensorboard(writer: FakeWriter, blocks: list[str], masks: list[str],
                       epochs: list[int], history: list[dict[str, Any]]) -> None:
    for block in blocks:
        for mask in masks:
            got = writer.scalars[f"mask_health/{block}/{mask}/std"]
            assert got == [(e, next(b for b in h["blocks"] if b["name"] == block)["masks"][mask]["std"])
                           for e, h in zip(epochs, history, strict=True)]
            hist = writer.histograms[f"mask_health/{block}/{mask}"]
            assert [h["step"] for h in hist] == epochs
            assert all(sum(h["bucket_counts"]) == h["num"] > 0 for h in hist)
        assert len(writer.scalars[f"mask_health/{block}/std_ratio"]) == len(epochs)


# ------------------------------------------------------------------------------- Ultralytics


@pytest.fixture(scope="module")
def yolo_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import make_checkpoints as mc

    root = tmp_path_factory.mktemp("yolo")
    mc.prepare_ultralytics()
    data_yaml = mc.make_dataset(root / "data", n_train=16, n_val=8)
    yaml_path = root / "tiny-coordatt.yaml"
    yaml_path.write_text(mc.YOLO_YAML.format(nc=mc.NUM_CLASSES, block="CoordAtt", extra=""))
    return {"root": root, "data": data_yaml, "yaml": yaml_path, "val": root / "data/images/val"}


def _yolo_train(setup: dict[str, Path], name: str, epochs: int, **watch: Any) -> tuple[Any, Any]:
    from ultralytics import YOLO

    from coordatt_diag.integrations.ultralytics import watch_training

    model = YOLO(str(setup["yaml"]), task="detect")
    callbacks = watch_training(model, budget=None, probe_images=setup["val"], samples=8, **watch)
    model.train(data=str(setup["data"]), epochs=epochs, imgsz=64, batch=8, workers=0,
                device="cpu", plots=False, amp=False, val=False, project=str(setup["root"]),
                name=name, exist_ok=True, seed=0, deterministic=True, verbose=False,
                close_mosaic=0, pretrained=False, nbs=8)
    return model, callbacks


def test_ultralytics_training_writes_history_tensorboard_and_log(
        yolo_setup: dict[str, Path]) -> None:
    from ultralytics.utils import LOGGER

    from coordatt_diag.integrations import tensorboard as tb
    from coordatt_diag.reports.watch import probe_lines
    from coordatt_diag.runs.inspect import analyze_model

    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler, level = Grab(level=logging.INFO), LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)  # YOLO_VERBOSE=false in the test environment
    writer, recorder = FakeWriter(), Recorder()
    try:
        model, callbacks = _yolo_train(yolo_setup, "watched", 2, tensorboard=writer,
                                       sinks=[recorder])
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
    trainer = model.trainer
    history_path = Path(trainer.save_dir) / "mask-health" / "history.jsonl"
    history = _history(history_path)
    assert [h["checkpoint"]["epoch"] for h in history] == [0, 1]  # not the final-eval call
    assert [b["name"] for b in history[0]["blocks"]] == ["model.5", "model.8"]
    assert history[0]["inputs"]["samples"] == 8 and history[0]["inputs"]["shape"] == [3, 64, 64]
    watch = callbacks.watch
    assert watch is not None and watch.closed and watch.probes == 2
    # the probed model is the EMA copy, the weights Ultralytics validates and saves
    ema = trainer.ema.ema
    again = analyze_model(ema, watch._batches)
    for b in again.blocks:
        last = next(x for x in history[-1]["blocks"] if x["name"] == b.name)
        for kind, m in b.masks.items():
            assert m.std == pytest.approx(last["masks"][kind]["std"], rel=1e-5)
    _check_tensorboard(writer, ["model.5", "model.8"], ["a_h", "a_w"], [0, 1], history)
    ours = [r for r in records if r.startswith(("mask watch", "epoch "))]
    assert ours[0].startswith("mask watch, epoch 0: 2 attention blocks (model.5, model.8) on "
                              "8 probe samples")
    expected = [line for r in recorder.results for line in probe_lines(r)]
    assert [r for r in records if r in expected] == expected  # each line once, in order
    if tb.available():
        assert list((history_path.parent).glob("events.out.tfevents.*"))


def test_ultralytics_stop_on_ends_the_training(yolo_setup: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "health.toml"
    config.write_text(STOP_CONFIG)
    model, callbacks = _yolo_train(yolo_setup, "stopped", 3, stop_on="warn", config=config,
                                   tensorboard=False)
    trainer = model.trainer
    assert trainer.stop and trainer.epoch == 0  # ended after its first epoch, of 3
    assert callbacks.watch is not None and callbacks.watch.should_stop
    history = _history(Path(trainer.save_dir) / "mask-health" / "history.jsonl")
    assert len(history) == 1 and history[0]["summary"]["status"] in ("warn", "fail")
    assert (Path(trainer.save_dir) / "weights" / "last.pt").exists()  # saved as on an early stop


# ------------------------------------------------------------------------------- Lightning


def _lightning_module() -> Any:
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    from coordatt_diag.demo import digits_net

    class DigitsModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = digits_net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return DigitsModule()


def _lightning_fit(tmp_path: Path, epochs: int, **callback: Any) -> tuple[Any, Any]:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from coordatt_diag.integrations.lightning import MaskHealth

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,)))
    health = MaskHealth(budget=None, probe=torch.randn(16, 1, 16, 16), **callback)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1,
                         default_root_dir=str(tmp_path), callbacks=[health],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(_lightning_module(), DataLoader(data, batch_size=16))
    return trainer, health


def test_lightning_fit_writes_history_tensorboard_and_log(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    writer = FakeWriter()
    trainer, health = _lightning_fit(tmp_path, 2, tensorboard=writer)
    history_path = Path(trainer.log_dir) / "mask-health" / "history.jsonl"
    history = _history(history_path)
    assert [h["checkpoint"]["epoch"] for h in history] == [0, 1]
    assert [h["checkpoint"]["extra"]["watch"]["step"] for h in history] == [4, 8]
    blocks = ["net.stage1.att", "net.stage2.att", "net.stage3.att"]
    assert [b["name"] for b in history[0]["blocks"]] == blocks
    _check_tensorboard(writer, blocks, ["a_h", "a_w"], [0, 1], history)
    out = capsys.readouterr().out
    assert "mask watch, epoch 0: 3 attention blocks (net.stage1.att, net.stage2.att, " \
           "net.stage3.att) on 16 probe samples" in out
    assert health.watch is not None and health.watch.closed


def test_lightning_stop_on_ends_the_fit(tmp_path: Path) -> None:
    config = tmp_path / "health.toml"
    config.write_text(STOP_CONFIG)
    trainer, health = _lightning_fit(tmp_path, 3, stop_on="warn", config=config, tensorboard=False)
    assert trainer.should_stop and trainer.current_epoch == 1  # one epoch of 3 ran
    assert health.watch is not None and health.watch.probes == 1
    assert len(_history(Path(trainer.log_dir) / "mask-health" / "history.jsonl")) == 1
