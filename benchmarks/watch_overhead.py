"""What a mask watch costs during training: one probe per epoch as a share of an epoch.

Two trainings, each run twice with the same seed, without and with `MaskWatch` probing after
every epoch (default settings: a probe of 32 samples (`--samples`), TensorBoard off, history on):

* `digits`: the demo's training (`coordatt_diag.demo.train_sgd` schedule: SGD, batch 64, the
  1437 training digits, the digits net with three CoordAtt blocks); the probe is 32 held-out
  digits. Epoch time: wall time of each epoch of the run without the watch.
* `ultralytics` (integration venv): a tiny YOLO with two user-written CoordAtt blocks
  (tests/integration/make_checkpoints.py: its YAML, `custom_blocks`, a generated dataset of
  `--train-images` images) trained at imgsz 64 on the CPU through `watch_training`; the probe is
  32 validation images. Epoch time: from `on_train_epoch_start` to `on_fit_epoch_end` (the
  training pass; validation off except after the last epoch) in the run without the watch.

Printed: median epoch time, median probe time (`ProbeResult.seconds`; the first probe, which also
finds the blocks, separately) and their ratio; with `--check` the loss curve of the two runs is
compared too (digits: it must be identical).

Usage:
    python benchmarks/watch_overhead.py digits [--epochs 4] [--samples 32] [--threads 1]
    PYTHONPATH=$PWD $VENV/bin/python benchmarks/watch_overhead.py ultralytics \
        [--epochs 3] [--train-images 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coordatt_diag.runs.watch import DEFAULT_BUDGET, DEFAULT_PROBE_SAMPLES  # noqa: E402


class Recorder:
    """A watch sink keeping every probe's result."""

    def __init__(self) -> None:
        self.results: list[Any] = []

    def write(self, result: Any) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass


def digits(epochs: int, samples: int, log_dir: Path, budget: float | None) -> dict[str, Any]:
    import torch.nn.functional as F

    from coordatt_diag.demo import digits_net, load_digits_split
    from coordatt_diag.watch import MaskWatch

    split = load_digits_split(seed=0)
    probe = split.x_test[:samples]

    def run(watched: bool) -> tuple[list[float], list[float], Recorder]:
        torch.manual_seed(0)
        model = digits_net()
        rec = Recorder()
        watch = (MaskWatch(model, probe, log_dir=log_dir, log=None, tensorboard=False,
                           sinks=[rec], budget=budget) if watched else None)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(0)
        x, y = split.x_train, split.y_train
        epoch_s, losses = [], []
        for epoch in range(epochs):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 64):
                idx = perm[i:i + 64]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            epoch_s.append(time.perf_counter() - t0)
            if watch is not None:
                watch.step(epoch)
        if watch is not None:
            watch.close()
        return epoch_s, losses, rec

    plain_s, plain_losses, _ = run(False)
    _, watched_losses, rec = run(True)
    return {"epoch_s": plain_s, "probes": [r.seconds for r in rec.results],
            "same_losses": plain_losses == watched_losses,
            "samples": rec.results[0].report.inputs.samples}


def ultralytics(epochs: int, samples: int, train_images: int, root: Path,
                budget: float | None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    import make_checkpoints as mc
    from ultralytics import YOLO

    from coordatt_diag.integrations.ultralytics import watch_training

    mc.prepare_ultralytics()
    data = mc.make_dataset(root / "data", n_train=train_images, n_val=samples)
    yaml_path = root / "tiny-coordatt.yaml"
    yaml_path.write_text(mc.YOLO_YAML.format(nc=mc.NUM_CLASSES, block="CoordAtt", extra=""))

    def run(watched: bool) -> tuple[list[float], Recorder]:
        model = YOLO(str(yaml_path), task="detect")
        rec = Recorder()
        starts: list[float] = []
        epoch_s: list[float] = []
        model.add_callback("on_train_epoch_start", lambda t: starts.append(time.perf_counter()))
        model.add_callback("on_train_epoch_end",
                           lambda t: epoch_s.append(time.perf_counter() - starts[-1]))
        if watched:
            watch_training(model, probe_images=root / "data" / "images" / "val",
                           samples=samples, tensorboard=False, sinks=[rec], log=None,
                           budget=budget)
        model.train(data=str(data), epochs=epochs, imgsz=64, batch=16, workers=0, device="cpu",
                    plots=False, amp=False, val=False, project=str(root), exist_ok=True,
                    name="watched" if watched else "plain", seed=0, deterministic=True,
                    verbose=False, close_mosaic=0, pretrained=False)
        return epoch_s, rec

    plain_s, _ = run(False)
    _, rec = run(True)
    return {"epoch_s": plain_s, "probes": [r.seconds for r in rec.results],
            "samples": rec.results[0].report.inputs.samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("training", choices=("digits", "ultralytics"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-images", type=int, default=256)
    ap.add_argument("--samples", type=int, default=DEFAULT_PROBE_SAMPLES,
                    help="probe samples (default: the watch's default for a probe folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", default=str(DEFAULT_BUDGET),
                    help="the watch's time budget (default: its default); 'none' probes every epoch")
    args = ap.parse_args(argv)
    budget = None if args.budget.lower() == "none" else float(args.budget)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.training == "digits":
            out = digits(args.epochs, args.samples, Path(tmp), budget)
        else:
            out = ultralytics(args.epochs, args.samples, args.train_images, Path(tmp), budget)
    epoch = statistics.median(out["epoch_s"])
    first, later = out["probes"][0], out["probes"][1:] or out["probes"]
    probe = statistics.median(later)
    print(f"{args.training}: torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.epochs} epochs, probe of {out['samples']} samples")
    print(f"  epoch (no watch): median {epoch:.3f} s  {[round(s, 3) for s in out['epoch_s']]}")
    print(f"  probe: median {probe:.3f} s (first, with discovery: {first:.3f} s)  "
          f"{[round(s, 3) for s in out['probes']]}")
    print(f"  probe per epoch as a share of an epoch: {probe / epoch:.2%} "
          f"(first probe {first / epoch:.2%})")
    total = sum(out["epoch_s"])
    print(f"  with budget {budget}: {len(out['probes'])} probes in {args.epochs} epochs, "
          f"probe time {sum(out['probes']):.3f} s = {sum(out['probes']) / total:.2%} of the "
          f"training time ({total:.3f} s)")
    if "same_losses" in out:
        print(f"  loss curve with the watch identical to without: {out['same_losses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
