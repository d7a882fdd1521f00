#!/usr/bin/env python
"""Train the digits demo pair (healthy / collapsed Coordinate Attention) and save it.

Both models are ``coordatt_diag.demo:digits_net``, trained with the same seed, data order and
schedule (SGD lr 0.1, momentum 0.9, cosine over 12 epochs, batch 64) and differing only in weight
decay (5e-4 healthy, 1e-2 collapsed). Training is deterministic: one thread,
``torch.use_deterministic_algorithms(True)``, seeded init and data order.

Writes to ``--out`` (default ``examples/``):

* ``digits_healthy.pt``, ``digits_collapsed.pt``: ``{"state_dict", "epoch", "meta"}`` (tensors and
  plain Python types only; loads with ``torch.load(weights_only=True)``);
* ``digits_samples.pt``: float32 (128, 1, 16, 16), the first 128 held-out samples, preprocessed;
* ``digits_labels.pt``: int64 (128,), their labels.

Prints the held-out accuracy and, per CoordAtt block, the std of a_h and a_w over the whole
held-out split (360 samples) and over the 128 saved samples.

``--check`` retrains into a temporary folder and compares with the files in ``--out``
(accuracy within 0.03; each mask std within 30 % relative or 0.005 absolute): exit 1 if off.

Needs scikit-learn (``pip install scikit-learn``). About 20 s of CPU per model.

Usage::

    python scripts/make_demo.py              # (re)write examples/
    python scripts/make_demo.py --check      # retrain in a temp dir, compare with examples/
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coordatt_diag.blocks import CoordinateAtt  # noqa: E402
from coordatt_diag.demo import digits_net, load_digits_split, train_sgd  # noqa: E402

FACTORY = "coordatt_diag.demo:digits_net"
SEED = 0
EPOCHS = 12
BATCH_SIZE = 64
LR = 0.1
MOMENTUM = 0.9
N_SAMPLES = 128
MODELS = {"healthy": 5e-4, "collapsed": 1e-2}
"""File stem -> weight decay."""

STD_REL_TOL = 0.30
STD_ABS_TOL = 0.005
ACC_TOL = 0.03


def set_deterministic() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def train(weight_decay: float, split: Any, seed: int = SEED) -> tuple[nn.Module, float]:
    """Train one model; returns it (in eval mode) and the training time in seconds."""
    torch.manual_seed(seed)
    model = digits_net()
    seconds = train_sgd(model, split, EPOCHS, weight_decay, seed, lr=LR, momentum=MOMENTUM,
                        batch_size=BATCH_SIZE)
    return model, seconds


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Accuracy on (x, y) and, per CoordinateAtt block, std of a_h / a_w over x (one batch)."""
    model.eval()
    acc = float((model(x).argmax(dim=1) == y).float().mean())
    stds: dict[str, dict[str, float]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, CoordinateAtt):
            assert mod._last_ah is not None and mod._last_aw is not None
            stds[name] = {"a_h": float(torch.std(mod._last_ah)),
                          "a_w": float(torch.std(mod._last_aw))}
    return {"accuracy": acc, "mask_std": stds}


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    model = digits_net()
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    return model, ckpt


def fmt_stds(stds: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{n}: a_h {s['a_h']:.4f} a_w {s['a_w']:.4f}" for n, s in stds.items())


def make(out: Path) -> dict[str, Any]:
    """Train both models and write the files to ``out``; returns the figures."""
    set_deterministic()
    out.mkdir(parents=True, exist_ok=True)
    split = load_digits_split(seed=SEED)
    samples = split.x_test[:N_SAMPLES].contiguous().clone()
    labels = split.y_test[:N_SAMPLES].contiguous().clone()
    torch.save(samples, out / "digits_samples.pt")
    torch.save(labels, out / "digits_labels.pt")
    print(f"data: {len(split.x_train)} train / {len(split.x_test)} held-out digits, "
          f"input {tuple(samples.shape[1:])}, mean {split.mean:.4f} std {split.std:.4f}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    figures: dict[str, Any] = {}
    for stem, wd in MODELS.items():
        model, seconds = train(wd, split)
        held = evaluate(model, split.x_test, split.y_test)
        samp = evaluate(model, samples, labels)
        meta = {
            "weight_decay": wd,
            "test_accuracy": held["accuracy"],
            "samples_accuracy": samp["accuracy"],
            "factory": FACTORY,
            "mask_std_test": held["mask_std"],
            "mask_std_samples": samp["mask_std"],
            "train": {"seed": SEED, "epochs": EPOCHS, "batch_size": BATCH_SIZE, "lr": LR,
                      "momentum": MOMENTUM, "schedule": "cosine per step",
                      "optimizer": "SGD"},
            "input": {"size": int(samples.shape[-1]), "mean": split.mean, "std": split.std,
                      "source": "sklearn.datasets.load_digits, test_size 0.2 stratified, "
                                "random_state 0"},
        }
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "epoch": EPOCHS, "meta": meta},
                   out / f"digits_{stem}.pt")
        figures[stem] = {"held_out": held, "samples": samp, "seconds": seconds}
        print(f"{stem} (weight decay {wd:g}): trained in {seconds:.1f} s")
        print(f"  held-out ({len(split.x_test)}): accuracy {held['accuracy']:.4f}  "
              f"{fmt_stds(held['mask_std'])}")
        print(f"  samples  ({N_SAMPLES}): accuracy {samp['accuracy']:.4f}  "
              f"{fmt_stds(samp['mask_std'])}")
    return figures


def std_close(a: float, b: float) -> bool:
    return abs(a - b) <= max(STD_ABS_TOL, STD_REL_TOL * abs(b))


def compare(new_dir: Path, ref_dir: Path) -> list[str]:
    """Differences beyond tolerance between the demo files in ``new_dir`` and ``ref_dir``.

    Both pairs of checkpoints are evaluated on the reference samples.
    """
    problems: list[str] = []
    samples = torch.load(str(ref_dir / "digits_samples.pt"), weights_only=True)
    labels = torch.load(str(ref_dir / "digits_labels.pt"), weights_only=True)
    new_samples = torch.load(str(new_dir / "digits_samples.pt"), weights_only=True)
    if new_samples.shape != samples.shape or not torch.allclose(new_samples, samples, atol=1e-5):
        problems.append("digits_samples.pt differs from the reference")
    for stem in MODELS:
        ref_model, _ = load_checkpoint(ref_dir / f"digits_{stem}.pt")
        new_model, _ = load_checkpoint(new_dir / f"digits_{stem}.pt")
        ref = evaluate(ref_model, samples, labels)
        new = evaluate(new_model, samples, labels)
        if abs(new["accuracy"] - ref["accuracy"]) > ACC_TOL:
            problems.append(f"{stem}: accuracy {new['accuracy']:.4f} vs {ref['accuracy']:.4f}")
        for block, ref_s in ref["mask_std"].items():
            for axis in ("a_h", "a_w"):
                a, b = new["mask_std"][block][axis], ref_s[axis]
                if not std_close(a, b):
                    problems.append(f"{stem} {block} {axis}: std {a:.4f} vs {b:.4f}")
        same = all(torch.equal(v, new_model.state_dict()[k])
                   for k, v in ref_model.state_dict().items())
        print(f"{stem}: retrained weights {'bit-identical to' if same else 'differ from'} "
              f"{ref_dir / f'digits_{stem}.pt'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "examples",
                        help="folder of the demo files (default: examples/)")
    parser.add_argument("--check", action="store_true",
                        help="retrain into a temp dir and compare with the files in --out")
    args = parser.parse_args(argv)
    if not args.check:
        make(args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        make(Path(tmp))
        problems = compare(Path(tmp), args.out)
    if problems:
        print("CHECK FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"check passed: within {STD_REL_TOL:.0%} / {STD_ABS_TOL} on mask std, "
          f"{ACC_TOL} on accuracy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
