#!/usr/bin/env python
"""Validation study: how often each finding fires on healthy and on broken models.

Trains a labelled set of small digit classifiers (scikit-learn's bundled digits, the demo's data
and network shape: ``coordatt_diag.demo``) whose three attention blocks come from one family:

* ``coordatt``: the package's reference ``CoordinateAtt`` (sigmoid, h-swish);
* ``coordatt-hsig-res``: ``CoordinateAtt`` with add-on 5 (hard-sigmoid gate) and add-on 6
  (attention residual, beta 0.5): an identity path, so the seed's std-ratio floor applies;
* ``cbam-coord``: the package's ``CBAMChannelPlusCoord`` (seed 001 step 2, residual blend);
* ``official``: the hand-written houqb/CoordAttention block (``tests/fixtures/models.py``);
* ``se``: a hand-written squeeze-and-excitation block (channel mask only).

and one condition:

* ``healthy``: SGD lr 0.1, momentum 0.9, cosine, weight decay 5e-4;
* ``collapsed``: the same with weight decay ``--collapse-wd`` (default 2e-2);
* ``saturated``: healthy training, but the gate heads' biases start at +6 and stay there
  (frozen): the masks sit at ~1;
* ``untrained``: the initialised network, not trained.

Each model is inspected on the 360 held-out digits with the mask effect measured (labels given),
exactly as ``coordatt-diag inspect --effect --labels`` does, and the findings are tallied per
condition. Healthy models should raise nothing (a finding there is a false alarm); each broken
model should raise something (a model where nothing fires is a miss).

The tables go into ``docs/validation.md`` between the ``validate:begin`` / ``validate:end``
markers (the prose around them is kept). Needs scikit-learn.

Usage::

    python scripts/validate.py                 # train, inspect, rewrite the tables
    python scripts/validate.py --epochs 3 --families coordatt --out /tmp/v.md
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coordatt_diag.blocks import CBAMChannelPlusCoord, CoordinateAtt  # noqa: E402
from coordatt_diag.demo import NUM_CLASSES, load_digits_split, train_sgd  # noqa: E402
from coordatt_diag.health.thresholds import ThresholdConfig, Thresholds  # noqa: E402
from coordatt_diag.results import CheckpointInfo, InputsInfo, Report  # noqa: E402
from coordatt_diag.runs.effect import measure_effect  # noqa: E402
from coordatt_diag.runs.inspect import finalize, run_batches  # noqa: E402

DOC = ROOT / "docs" / "validation.md"
BEGIN, END = "<!-- validate:begin -->", "<!-- validate:end -->"
CONDITIONS = ("healthy", "collapsed", "saturated", "untrained")
BROKEN = CONDITIONS[1:]
LR, MOMENTUM, BATCH_SIZE = 0.1, 0.9, 64
HEALTHY_WD = 5e-4
SATURATED_BIAS = 6.0
SEED_STD = 0.02  # seed 000 section 10: "mask std very low" below this
SEED_RATIO = 0.45  # seed 001 step 2: r_min, the std-ratio floor


def _official(c: int) -> nn.Module:
    from tests.fixtures.models import OfficialCoordAtt

    return OfficialCoordAtt(c)


def _se(c: int) -> nn.Module:
    from tests.fixtures.models import SEBlock

    return SEBlock(c)


FAMILIES: dict[str, Callable[[int], nn.Module]] = {
    "coordatt": lambda c: CoordinateAtt(c),
    "coordatt-hsig-res": lambda c: CoordinateAtt(c, gate="hardsigmoid", att_residual_beta=0.5),
    "cbam-coord": lambda c: CBAMChannelPlusCoord(c),
    "official": _official,
    "se": _se,
}

#: Parameter names (suffixes) of the biases that feed each family's gates.
GATE_BIASES = ("conv_h.bias", "conv_w.bias", "h_attention_head.bias", "w_attention_head.bias",
               "ca.fc2.bias", "fc.2.bias")


class Net(nn.Module):
    """The demo's ``DigitsNet`` with any attention block: stem, three conv stages each ending in
    ``att``, global average pool, linear head."""

    def __init__(self, att: Callable[[int], nn.Module], widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        w0, w1, w2 = widths

        def stage(cin: int, cout: int) -> nn.Sequential:
            s = nn.Sequential()
            s.add_module("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            s.add_module("bn", nn.BatchNorm2d(cout))
            s.add_module("relu", nn.ReLU())
            s.add_module("att", att(cout))
            return s

        self.stem = nn.Sequential(nn.Conv2d(1, w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0),
                                  nn.ReLU())
        self.stage1, self.stage2, self.stage3 = stage(w0, w1), stage(w1, w2), stage(w2, w2)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(w2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stage1(self.stem(x)))
        x = self.pool(self.stage2(x))
        return self.head(self.stage3(x).mean(dim=(2, 3)))


def saturate(model: nn.Module) -> int:
    """Set the gate heads' biases to +6 and freeze them; returns how many were set."""
    n = 0
    for name, p in model.named_parameters():
        if ".att." in name and name.endswith(GATE_BIASES):
            with torch.no_grad():
                p.fill_(SATURATED_BIAS)
            p.requires_grad_(False)
            n += 1
    return n


def train(model: nn.Module, split: Any, epochs: int, weight_decay: float, seed: int) -> float:
    """The demo's schedule (``coordatt_diag.demo.train_sgd``); returns seconds."""
    return train_sgd(model, split, epochs, weight_decay, seed, lr=LR, momentum=MOMENTUM,
                     batch_size=BATCH_SIZE)


@dataclass(frozen=True)
class BlockRow:
    """What the study keeps of one block."""

    name: str
    min_std: float | None  # smallest std over the block's masks
    std_ratio: float | None
    identity_path: bool
    effect_const: float | None  # relative L2 output change, masks -> constant
    effect_pos: float | None
    findings: tuple[str, ...]


@dataclass(frozen=True)
class ModelRow:
    """One trained (or untrained) model and what inspect said about it."""

    family: str
    condition: str
    seed: int
    accuracy: float
    blocks: tuple[BlockRow, ...]
    seconds: float = 0.0

    def codes(self) -> set[str]:
        return {c for b in self.blocks for c in b.findings}


def rows_from_report(family: str, condition: str, seed: int, accuracy: float, report: Report,
                     seconds: float = 0.0) -> ModelRow:
    """A `ModelRow` from an inspect report (with the mask effect)."""
    blocks = []
    for b in report.blocks:
        stds = [m.std for m in b.masks.values() if m.std is not None]
        e = b.effect
        blocks.append(BlockRow(
            name=b.name, min_std=min(stds) if stds else None,
            std_ratio=b.std_ratio.mean if b.std_ratio else None, identity_path=b.identity_path,
            effect_const=e.constant.rel_l2 if e else None,
            effect_pos=e.positional.rel_l2 if e and e.positional else None,
            findings=tuple(sorted({f.code for f in b.findings})),
        ))
    return ModelRow(family, condition, seed, accuracy, tuple(blocks), seconds)


def inspect_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  thresholds: ThresholdConfig, batch: int = 90) -> Report:
    """What ``inspect --effect --labels`` reports for `model` on (x, y)."""
    batches = [x[i:i + batch] for i in range(0, len(x), batch)]
    state = run_batches(model, batches, device="cpu")
    effects = measure_effect(model, state.blocks, batches, labels=y, device="cpu")
    inputs = InputsInfo(source="tensors", path=None, samples=len(x), batches=len(batches),
                        batch_size=batch, shape=list(x.shape[1:]))
    return finalize(model, state, thresholds, CheckpointInfo(None, None, "in-memory"), inputs,
                    effects=effects)


# ---------------------------------------------------------------------------------------------
# Tables


def _share(k: int, n: int) -> str:
    return f"{k}/{n}" if n else "-"


def _spread(values: Iterable[float | None], fmt: str = "{:.3f}") -> str:
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return "-"
    med = statistics.median(vals)
    return f"{fmt.format(med)} ({fmt.format(vals[0])}-{fmt.format(vals[-1])})"


def findings_table(rows: list[ModelRow]) -> str:
    """Per finding code: on how many models of each condition it fired (any block).

    On healthy models every firing is a false alarm; the last row counts the broken models on
    which nothing fired (misses).
    """
    by_cond = {c: [r for r in rows if r.condition == c] for c in CONDITIONS}
    codes = sorted({c for r in rows for c in r.codes()})
    head = ("| finding | healthy (false alarms) | "
            + " | ".join(c for c in BROKEN) + " |\n|---|---|" + "---|" * len(BROKEN))
    lines = [head]
    for code in codes:
        cells = [_share(sum(code in r.codes() for r in by_cond[c]), len(by_cond[c]))
                 for c in CONDITIONS]
        lines.append(f"| `{code}` | " + " | ".join(cells) + " |")
    anyf = [_share(sum(bool(r.codes()) for r in by_cond[c]), len(by_cond[c])) for c in CONDITIONS]
    lines.append("| any finding | " + " | ".join(anyf) + " |")
    miss = ["-"] + [_share(sum(not r.codes() for r in by_cond[c]), len(by_cond[c]))
                    for c in BROKEN]
    lines.append("| **nothing fired (misses)** | " + " | ".join(miss) + " |")
    return "\n".join(lines)


def effect_table(rows: list[ModelRow]) -> str:
    """Per condition: accuracy, mask std, std ratio and mask effect over the blocks (median and
    range)."""
    lines = ["| condition | models | accuracy | min mask std | std ratio | effect: constant "
             "| effect: positional |", "|---|---|---|---|---|---|---|"]
    for c in CONDITIONS:
        rs = [r for r in rows if r.condition == c]
        if not rs:
            continue
        blocks = [b for r in rs for b in r.blocks]
        lines.append(
            f"| {c} | {len(rs)} | {_spread(r.accuracy for r in rs)} "
            f"| {_spread((b.min_std for b in blocks), '{:.4f}')} "
            f"| {_spread(b.std_ratio for b in blocks)} "
            f"| {_spread(b.effect_const for b in blocks)} "
            f"| {_spread(b.effect_pos for b in blocks)} |")
    return "\n".join(lines)


def seed_rules_table(rows: list[ModelRow], default: Thresholds | None = None) -> str:
    """The seed's two rules per condition: blocks with a mask std below 0.02 (and below the
    package's near_constant_warn), identity-path blocks with a std ratio below 0.45."""
    th = default or Thresholds()
    lines = [f"| condition | blocks with std < {SEED_STD} | blocks with std < "
             f"{th.near_constant_warn} | identity-path blocks with std ratio < {SEED_RATIO} "
             "| multiplicative blocks: std ratio |", "|---|---|---|---|---|"]
    for c in CONDITIONS:
        blocks = [b for r in rows if r.condition == c for b in r.blocks]
        if not blocks:
            continue
        stds = [b for b in blocks if b.min_std is not None]
        ident = [b for b in blocks if b.identity_path and b.std_ratio is not None]
        mult = [b.std_ratio for b in blocks if not b.identity_path]
        lines.append(
            f"| {c} | {_share(sum(b.min_std < SEED_STD for b in stds), len(stds))} "  # type: ignore[operator]
            f"| {_share(sum(b.min_std < th.near_constant_warn for b in stds), len(stds))} "  # type: ignore[operator]
            f"| {_share(sum(b.std_ratio < SEED_RATIO for b in ident), len(ident))} "  # type: ignore[operator]
            f"| {_spread(mult)} |")
    return "\n".join(lines)


def models_table(rows: list[ModelRow]) -> str:
    """Every model and block: mask std, std ratio, effect and findings."""
    lines = ["| family | condition | accuracy | block | min std | std ratio | effect const / pos "
             "| findings |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for i, b in enumerate(r.blocks):
            first = i == 0
            lines.append(
                f"| {r.family if first else ''} | {r.condition if first else ''} "
                f"| {f'{r.accuracy:.3f}' if first else ''} | {b.name} "
                f"| {'-' if b.min_std is None else f'{b.min_std:.4f}'} "
                f"| {'-' if b.std_ratio is None else f'{b.std_ratio:.3f}'}"
                f"{' (id)' if b.identity_path else ''} "
                f"| {'-' if b.effect_const is None else f'{b.effect_const:.3f}'} / "
                f"{'-' if b.effect_pos is None else f'{b.effect_pos:.3f}'} "
                f"| {', '.join(b.findings) or '-'} |")
    return "\n".join(lines)


def build_section(rows: list[ModelRow], meta: dict[str, Any]) -> str:
    """The generated part of docs/validation.md."""
    settings = ", ".join(f"{k} {v}" for k, v in meta.items())
    return "\n\n".join([
        BEGIN,
        f"Generated by `python scripts/validate.py` ({settings}).",
        "### Findings per condition\n\nModels on which the finding fired on at least one block.\n\n"
        + findings_table(rows),
        "### Mask effect and statistics per condition\n\nMedian (range) over all blocks of all "
        "models of the condition; effect is the relative L2 change of the logits with the masks "
        "replaced.\n\n" + effect_table(rows),
        "### The seed's rules\n\n" + seed_rules_table(rows),
        "### Every model\n\n`(id)`: the block has an identity path.\n\n" + models_table(rows),
        END,
    ])


def write_doc(section: str, path: Path) -> None:
    """Replace the generated section of `path` (or write a bare page holding it)."""
    text = path.read_text() if path.exists() else "# Validation study\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + section + tail)


# ---------------------------------------------------------------------------------------------


def run(families: list[str], seeds: list[int], epochs: int, collapse_wd: float,
        log: Callable[[str], None] = print) -> list[ModelRow]:
    """Train and inspect every (family, condition, seed); returns the rows."""
    split = load_digits_split(seed=0)
    thresholds = ThresholdConfig()
    rows: list[ModelRow] = []
    for family in families:
        for seed in seeds:
            for condition in CONDITIONS:
                torch.manual_seed(seed)
                model = Net(FAMILIES[family])
                seconds = 0.0
                if condition == "saturated":
                    saturate(model)
                if condition != "untrained":
                    wd = collapse_wd if condition == "collapsed" else HEALTHY_WD
                    seconds = train(model, split, epochs, wd, seed)
                model.eval()
                with torch.no_grad():
                    acc = float((model(split.x_test).argmax(1) == split.y_test).float().mean())
                report = inspect_model(model, split.x_test, split.y_test, thresholds)
                row = rows_from_report(family, condition, seed, acc, report, seconds)
                rows.append(row)
                log(f"{family:<18} {condition:<9} seed {seed}: accuracy {acc:.3f}, "
                    f"trained {seconds:.1f} s; " + "; ".join(
                        f"{b.name} std {b.min_std:.4f} eff {b.effect_const:.3f} "
                        f"[{','.join(b.findings)}]" for b in row.blocks
                        if b.min_std is not None and b.effect_const is not None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", type=int, default=1, help="seeds per family (default 1)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    parser.add_argument("--collapse-wd", type=float, default=2e-2,
                        help="weight decay of the collapsed models (default 2e-2)")
    parser.add_argument("--out", type=Path, default=DOC, help="page to update")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = run(args.families, list(range(args.seeds)), args.epochs, args.collapse_wd)
    seconds = time.perf_counter() - t0
    meta = {"families": len(args.families), "seeds": args.seeds, "epochs": args.epochs,
            "collapse weight decay": f"{args.collapse_wd:g}", "models": len(rows),
            "torch": torch.__version__, "threads": 1, "run time": f"{seconds:.0f} s"}
    write_doc(build_section(rows, meta), args.out)
    print(f"wrote {args.out}: {len(rows)} models in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
