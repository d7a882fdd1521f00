#!/usr/bin/env python
"""Validation study: are the verdicts right on small models the tool never saw?

Trains small classifiers on two tasks generated offline (no download, no digits demo):

* ``shapes``: 16x16 images of one of six shapes (square, disc, triangle, cross, ring, bar pair)
  at a random place and size, on noise;
* ``textures``: 16x16 images of one of six textures (horizontal, vertical and two diagonal
  gratings, checkerboard, dots) at a random frequency, phase and contrast, on noise;

with three attention blocks (one per stage) of one family (``FAMILIES``: each is written here,
so the study does not depend on how the package finds or replaces masks; add a family by adding
a ``Family``), every block in one condition, or each block in its own ("mixed"):

* ``healthy``: SGD with weight decay 5e-4 on everything;
* ``collapsed``: the block's parameters under a weight decay of ``COLLAPSE_WD``;
* ``saturated``: the gate heads' weights multiplied by ``SATURATE_GAIN`` at init and the block
  frozen (else the layers before the heads learn to scale down): input-driven gates pinned at 0
  and 1;
* ``untrained``: the block's parameters frozen at their init while the rest trains;
* ``suppressing``: the gate heads' biases set to ``SUPPRESS_BIAS`` and frozen: gates near 0.

Each block's **effect** is measured by this script alone: every gate module of the block (the
study's blocks compute each mask with a gate module of their own) is replaced by a constant, the
gate's mean over the test set, and the change of the logits (relative L2) and of the accuracy is
recorded. A block **matters** when that costs at least ``MATTERS_ACC`` accuracy or changes the
logits by ``MATTERS_L2``.

Each model is then inspected as ``coordatt-diag inspect --effect --labels`` does (the package's
own discovery, statistics, effect and rules). The raw reports are saved (``--data``), so the
tables can be rebuilt with other thresholds without training again (``--rejudge``). The tables
go into ``docs/validation.md`` between the ``validate:begin`` / ``validate:end`` markers.

Usage::

    python scripts/validate.py                     # the whole study (~100 models)
    python scripts/validate.py --quick --out /tmp/v.md --data /tmp/v.json
    python scripts/validate.py --rejudge --data /tmp/v.json --out /tmp/v.md
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coordatt_diag.blocks import CoordinateAtt  # noqa: E402
from coordatt_diag.health.rules import judge  # noqa: E402
from coordatt_diag.health.thresholds import ThresholdConfig  # noqa: E402
from coordatt_diag.results import CheckpointInfo, InputsInfo, Report  # noqa: E402
from coordatt_diag.runs.effect import measure_effect  # noqa: E402
from coordatt_diag.runs.inspect import finalize, run_batches  # noqa: E402

DOC = ROOT / "docs" / "validation.md"
BEGIN, END = "<!-- validate:begin -->", "<!-- validate:end -->"
CONDITIONS = ("healthy", "collapsed", "saturated", "untrained", "suppressing")
MODEL_CONDITIONS = CONDITIONS + ("mixed",)
BROKEN = CONDITIONS[1:]
BARELY = "barely trained"
UNBROKEN = "did not break"
#: the labels of the tables. Two are neither healthy nor broken: a healthy block that training
#: barely moved (`MOVED_MIN`), and a block whose breaking did not take by the study's own
#: measures (a "collapsed" block whose masks still matter, a "saturated" one whose gates do not
#: sit at 0 or 1 on the test set)
LABELS = ("healthy", BARELY, UNBROKEN) + BROKEN
SIZE, CLASSES = 16, 6
LR, MOMENTUM, BATCH_SIZE, HEALTHY_WD = 0.05, 0.9, 64, 5e-4
COLLAPSE_WD = 3.0
SATURATE_GAIN = 25.0
SATURATE_STEPS = 4
#: a block labelled healthy whose parameters moved less than this (relative L2 from their init)
#: in training is "barely trained": neither healthy nor broken, listed on its own
MOVED_MIN = 0.05
SUPPRESS_BIAS = -6.0
MATTERS_ACC, MATTERS_L2 = 0.01, 0.10
EPOCHS = 12
#: the blocks' conditions in a "mixed" model, by seed
MIXES = (("healthy", "untrained", "collapsed"), ("saturated", "healthy", "suppressing"),
         ("untrained", "collapsed", "healthy"), ("suppressing", "saturated", "untrained"))


# ---------------------------------------------------------------------------------------------
# Tasks


def _noise(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    return rng.normal(0.0, level, size=(n, SIZE, SIZE))


def make_shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Six shapes at a random place and size on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    x = _noise(rng, n, 0.25)
    y = rng.integers(0, CLASSES, size=n)
    for i in range(n):
        r = rng.uniform(2.5, 4.5)
        cy, cx = rng.uniform(r + 1, SIZE - r - 1, size=2)
        dy, dx = yy - cy, xx - cx
        k = y[i]
        if k == 0:
            m = (np.abs(dy) <= r) & (np.abs(dx) <= r)
        elif k == 1:
            m = dy * dy + dx * dx <= r * r
        elif k == 2:
            m = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
        elif k == 3:
            m = ((np.abs(dy) <= 1) & (np.abs(dx) <= r)) | ((np.abs(dx) <= 1) & (np.abs(dy) <= r))
        elif k == 4:
            d = np.sqrt(dy * dy + dx * dx)
            m = (d <= r) & (d >= r - 1.5)
        else:
            m = (np.abs(dx) <= r) & ((np.abs(dy - r / 2) <= 0.7) | (np.abs(dy + r / 2) <= 0.7))
        x[i] += m * rng.uniform(0.6, 1.0)
    return torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y)


def make_textures(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Six textures at a random frequency, phase and contrast on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    x = _noise(rng, n, 0.35)
    y = rng.integers(0, CLASSES, size=n)
    for i in range(n):
        f = rng.uniform(0.35, 0.9)
        ph = rng.uniform(0, 2 * math.pi)
        c = rng.uniform(0.5, 1.0)
        k = y[i]
        if k == 0:
            t = np.sin(f * yy + ph)
        elif k == 1:
            t = np.sin(f * xx + ph)
        elif k == 2:
            t = np.sin(f * (xx + yy) / math.sqrt(2) + ph)
        elif k == 3:
            t = np.sin(f * (xx - yy) / math.sqrt(2) + ph)
        elif k == 4:
            t = np.sign(np.sin(f * xx + ph)) * np.sign(np.sin(f * yy + ph))
        else:
            t = (np.sin(f * 2 * xx + ph) > 0.6) * (np.sin(f * 2 * yy + ph) > 0.6) * 2.0 - 0.5
        x[i] += c * t
    return torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y)


TASKS: dict[str, Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]] = {
    "shapes": make_shapes,
    "textures": make_textures,
}


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_task(name: str, n_train: int, n_test: int) -> Split:
    make = TASKS[name]
    xt, yt = make(n_train, 1)
    xs, ys = make(n_test, 2)
    return Split(xt, yt, xs, ys)


# ---------------------------------------------------------------------------------------------
# Families: each block computes every mask with a gate module of its own (`gates`), and names the
# layers whose outputs feed a gate (`heads`), so the study can replace masks and break heads
# without the package.


class HSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3) / 6


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al.): x * a_h * a_w; with `alpha`/`beta` the package's blend
    scale = (1 - alpha) + alpha * (1 + beta * (a_h * a_w - 1)) (an identity path)."""

    heads = ("conv_h", "conv_w")

    def __init__(self, c: int, alpha: float | None = None, beta: float | None = None) -> None:
        super().__init__()
        mid = max(8, c // 4)
        self.conv1 = nn.Conv2d(c, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mid, c, 1)
        self.conv_w = nn.Conv2d(mid, c, 1)
        self.gate_h, self.gate_w = nn.Sigmoid(), nn.Sigmoid()
        self.blend = alpha is not None
        if alpha is not None:
            self.register_buffer("alpha", torch.tensor(float(alpha)))
            self.beta = float(beta if beta is not None else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x_h = x.mean(3, keepdim=True)
        x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.gate_h(self.conv_h(y_h))
        a_w = self.gate_w(self.conv_w(y_w.permute(0, 1, 3, 2)))
        att = a_h * a_w
        if not self.blend:
            return x * att
        scale = (1 - self.alpha) + self.alpha * (1 + self.beta * (att - 1))
        return x * scale


class CBAM(nn.Module):
    """CBAM: channel gate (shared MLP on avg and max pools), then spatial gate (conv on the channel
    mean and max)."""

    heads = ("fc2", "sa")

    def __init__(self, c: int) -> None:
        super().__init__()
        hidden = max(4, c // 4)
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, c, 1)
        self.sa = nn.Conv2d(2, 1, 5, padding=2)
        self.gate_c, self.gate_s = nn.Sigmoid(), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = lambda t: self.fc2(F.relu(self.fc1(t)))  # noqa: E731
        ca = self.gate_c(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
        y = x * ca
        sa = self.gate_s(self.sa(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)))
        return y * sa


class SE(nn.Module):
    """Squeeze-and-excitation."""

    heads = ("fc2",)

    def __init__(self, c: int) -> None:
        super().__init__()
        hidden = max(4, c // 4)
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class ECA(nn.Module):
    """Efficient channel attention: a 1-D conv across the pooled channels (with a bias here)."""

    heads = ("conv",)

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.conv(x.mean((2, 3)).unsqueeze(1))).squeeze(1)
        return x * s[:, :, None, None]


class SpatialAtt(nn.Module):
    """CBAM's spatial gate alone."""

    heads = ("conv",)

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 5, padding=2)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.conv(torch.cat([x.mean(1, keepdim=True),
                                                  x.amax(1, keepdim=True)], 1)))


class SelectiveKernel(nn.Module):
    """Selective kernel (Li et al.): two branches (3x3 and dilated 3x3), a squeeze of their sum,
    and per-channel branch weights from a softmax across the branches (`select` masks)."""

    heads = ("select",)
    gate_names = ("gate",)
    features = ("paths",)  # the branches: features, not attention (no collapse decay on them)
    branches = 2

    def __init__(self, c: int) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=d, dilation=d, groups=max(1, c // 8),
                                    bias=False), nn.BatchNorm2d(c), nn.ReLU())
            for d in (1, 2))
        hidden = max(8, c // 4)
        self.squeeze = nn.Sequential(nn.Linear(c, hidden), nn.ReLU())
        self.select = nn.Linear(hidden, c * self.branches)
        self.gate = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([p(x) for p in self.paths], dim=1)  # (B, M, C, H, W)
        z = self.squeeze(feats.sum(1).mean((2, 3)))
        w = self.gate(self.select(z).view(x.shape[0], self.branches, -1))
        return (feats * w[..., None, None]).sum(1)


class GroupedMultiScale(nn.Module):
    """Efficient multi-scale attention (Ouyang et al.), re-written: channels regrouped into the
    batch axis (B*G, C/G, H, W), coordinate gates a_h, a_w from a shared 1x1 conv, a group norm of
    the gated features, a 3x3 branch, and a spatial gate from the two branches' cross products."""

    heads = ("mix", "local")
    gate_names = ("gate_h", "gate_w", "gate_s")

    def __init__(self, c: int, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        cg = c // groups
        self.mix = nn.Conv2d(cg, cg, 1)
        self.local = nn.Conv2d(cg, cg, 3, padding=1)
        self.norm = nn.GroupNorm(cg, cg)
        self.gate_h, self.gate_w, self.gate_s = nn.Sigmoid(), nn.Sigmoid(), nn.Sigmoid()
        self.pick = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = x.reshape(b * self.groups, c // self.groups, h, w)
        pooled = torch.cat([g.mean(3, keepdim=True), g.mean(2, keepdim=True).transpose(2, 3)], 2)
        y_h, y_w = torch.split(self.mix(pooled), [h, w], dim=2)
        a_h, a_w = self.gate_h(y_h), self.gate_w(y_w.transpose(2, 3))
        g1 = self.norm(g * a_h * a_w)
        g2 = self.local(g)
        n = b * self.groups
        q1 = self.pick(g1.mean((2, 3)).reshape(n, 1, -1))
        q2 = self.pick(g2.mean((2, 3)).reshape(n, 1, -1))
        s = torch.bmm(q1, g2.reshape(n, c // self.groups, -1)) + torch.bmm(
            q2, g1.reshape(n, c // self.groups, -1))
        return (g * self.gate_s(s.reshape(n, 1, h, w))).reshape(b, c, h, w)


class SimAM(nn.Module):
    """Parameter-free attention (Yang et al.): each value weighted by the sigmoid of its inverse
    energy against its channel's spatial mean and variance. No weights: only `healthy` applies."""

    heads = ()

    def __init__(self, c: int, lam: float = 1e-4) -> None:
        super().__init__()
        self.lam = lam
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        energy = d / (4 * (d.sum((2, 3), keepdim=True) / n + self.lam)) + 0.5
        return x * self.gate(energy)


class PackageCoordAtt(CoordinateAtt):
    """The package's `CoordinateAtt` with the hard-sigmoid gate and an attention residual (beta
    0.5); its `_gate` method is the gate the study replaces."""

    heads = ("conv_h", "conv_w")

    def __init__(self, c: int) -> None:
        super().__init__(c, gate="hardsigmoid", att_residual_beta=0.5)
        self.replace_gate: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _gate(self, z: torch.Tensor) -> torch.Tensor:
        out = super()._gate(z)
        return self.replace_gate(out) if self.replace_gate is not None else out


@dataclass(frozen=True)
class Family:
    """A block family: its constructor, a word on it, and the conditions that can be built on it
    (a block without weights cannot be left untrained; a softmax across branches cannot be
    pushed towards 0 by a bias)."""

    make: Callable[[int], nn.Module]
    about: str
    conditions: tuple[str, ...] = ("healthy", "collapsed", "saturated", "untrained",
                                   "suppressing")


FAMILIES: dict[str, Family] = {
    "coordatt": Family(lambda c: CoordAtt(c), "coordinate attention, x * a_h * a_w"),
    "coordatt-blend": Family(lambda c: CoordAtt(c, alpha=0.8, beta=0.5),
                             "coordinate attention blended (alpha 0.8, beta 0.5): identity path"),
    "cbam": Family(CBAM, "CBAM: channel then spatial gate"),
    "se": Family(SE, "squeeze-and-excitation"),
    "eca": Family(ECA, "efficient channel attention"),
    "spatial": Family(SpatialAtt, "spatial gate alone"),
    "pkg-coordatt": Family(PackageCoordAtt,
                           "the package's CoordinateAtt, hard-sigmoid gate, residual beta 0.5"),
    "sk": Family(SelectiveKernel, "selective kernel: softmax across two branches",
                 ("healthy", "collapsed", "saturated", "untrained")),
    "grouped": Family(GroupedMultiScale,
                      "efficient multi-scale attention: grouped a_h, a_w and a spatial gate"),
    "simam": Family(SimAM, "parameter-free energy gate", ("healthy",)),
}


class Net(nn.Module):
    """Stem, three conv stages (16x16, 8x8, 4x4) each ending in an attention block `att`, global
    average pool, linear head."""

    def __init__(self, att: Callable[[int], nn.Module], widths: tuple[int, int, int] = (16, 24, 32)):
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
        self.stage1, self.stage2, self.stage3 = stage(w0, w0), stage(w0, w1), stage(w1, w2)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(w2, CLASSES)

    def blocks(self) -> dict[str, nn.Module]:
        return {f"stage{i}.att": getattr(self, f"stage{i}").att for i in (1, 2, 3)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stage1(self.stem(x)))
        x = self.pool(self.stage2(x))
        return self.head(self.stage3(x).mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# Conditions


def _heads(block: nn.Module) -> list[nn.Module]:
    return [getattr(block, h) for h in getattr(block, "heads", ())]


def attention_params(block: nn.Module) -> list[nn.Parameter]:
    """The block's parameters but its feature branches (`features`: a selective kernel's
    convolutions), which a collapse's weight decay leaves alone."""
    skip = {id(p) for f in getattr(block, "features", ()) for p in getattr(block, f).parameters()}
    return [p for p in block.parameters() if id(p) not in skip]


def gate_modules(block: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the block's masks: the ones it names (`gate_names`), else
    every sigmoid and hard sigmoid in it."""
    names = getattr(block, "gate_names", None)
    if names is not None:
        return [getattr(block, n) for n in names]
    return [m for m in block.modules() if isinstance(m, (nn.Sigmoid, nn.Hardsigmoid))]


def gate_saturation(model: Net, block: nn.Module, x: torch.Tensor) -> float:
    """Share of `block`'s gate outputs <= 0.01 or >= 0.99 on `x` (the study's own count, on a
    copy of the model in training mode, so nothing of `model` changes)."""
    twin = copy.deepcopy(model).train()
    name = next(n for n, m in model.named_modules() if m is block)
    swap = _GateSwap(dict(twin.named_modules())[name])
    with torch.no_grad():
        for _ in swap.run(swap._record):
            twin(x)
    return swap.ends / max(sum(n for _, n in swap.means), 1)


def saturate(model: Net, block: nn.Module, x: torch.Tensor) -> float:
    """Multiply the gate heads' weights by `SATURATE_GAIN`, and by 4 more while fewer than half
    the gate outputs on `x` sit at 0 or 1 (a head fed by small pooled values needs more), at
    most `SATURATE_STEPS` times; freeze the block. Returns the share reached."""
    gain = SATURATE_GAIN
    share = 0.0
    for _ in range(SATURATE_STEPS):
        for h in _heads(block):
            with torch.no_grad():
                h.weight.mul_(gain)
        share = gate_saturation(model, block, x)
        if share >= 0.5:
            break
        gain = 4.0
    for p in block.parameters():  # frozen whole, or the layers before the heads scale down
        p.requires_grad_(False)
    return share


def prepare(block: nn.Module, condition: str) -> float:
    """Break `block` as `condition` says before training (saturation: `saturate`); returns its
    weight decay."""
    if condition == "untrained":
        for p in block.parameters():
            p.requires_grad_(False)
    elif condition == "suppressing":
        for h in _heads(block):
            with torch.no_grad():
                h.bias.fill_(SUPPRESS_BIAS)
            h.bias.requires_grad_(False)
    return COLLAPSE_WD if condition == "collapsed" else HEALTHY_WD


def train(model: Net, split: Split, wd: dict[str, float], epochs: int, seed: int) -> float:
    """SGD with momentum and a cosine schedule; each block's parameters with its weight decay."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name, block in model.blocks().items():
        ps = [p for p in attention_params(block) if p.requires_grad]
        seen.update(id(p) for p in ps)
        if ps:
            groups.append({"params": ps, "weight_decay": wd[name]})
    rest = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    groups.append({"params": rest, "weight_decay": HEALTHY_WD})
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    x, y = split.x_train, split.y_train
    steps = epochs * math.ceil(len(x) / BATCH_SIZE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH_SIZE):
            idx = perm[i:i + BATCH_SIZE]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# The study's own effect measurement


class _GateSwap:
    """Replaces every gate output of one block by a constant while active; records means."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self.gates = gate_modules(block)
        self.means: list[tuple[float, int]] = []
        self.ends = 0  # gate outputs <= 0.01 or >= 0.99 while recording
        self.constant: float | None = None

    def _record(self, out: torch.Tensor) -> torch.Tensor:
        self.means.append((float(out.double().sum()), out.numel()))
        self.ends += int(((out <= 0.01) | (out >= 0.99)).sum())
        return out

    def _swap(self, out: torch.Tensor) -> torch.Tensor:
        assert self.constant is not None
        return torch.full_like(out, self.constant)

    def run(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        handles = [g.register_forward_hook(lambda _m, _i, o: fn(o)) for g in self.gates]
        if isinstance(self.block, PackageCoordAtt):
            self.block.replace_gate = fn
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            if isinstance(self.block, PackageCoordAtt):
                self.block.replace_gate = None


def own_effect(model: Net, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per block: logits change (relative L2) and accuracy drop with its gates at a constant (the
    gate outputs' mean over `x`)."""
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        base = model(x)
        acc = float((base.argmax(1) == y).float().mean())
        for name, block in model.blocks().items():
            swap = _GateSwap(block)
            for _ in swap.run(swap._record):
                model(x)
            total = sum(s for s, _ in swap.means)
            count = sum(n for _, n in swap.means)
            swap.constant = total / max(count, 1)
            for _ in swap.run(swap._swap):
                alt = model(x)
            rel = float((alt - base).norm() / base.norm().clamp(min=1e-12))
            out[name] = {"rel_l2": rel,
                         "acc_drop": acc - float((alt.argmax(1) == y).float().mean()),
                         "gate_mean": swap.constant, "gate_ends": swap.ends / max(count, 1)}
    return out


def matters(e: dict[str, float]) -> bool:
    return e["acc_drop"] >= MATTERS_ACC or e["rel_l2"] >= MATTERS_L2


# ---------------------------------------------------------------------------------------------
# One model


def inspect_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 100) -> Report:
    """What ``inspect --effect --labels`` reports for `model` on (x, y)."""
    batches = [x[i:i + batch] for i in range(0, len(x), batch)]
    state = run_batches(model, batches, device="cpu")
    effects = measure_effect(model, state.blocks, batches, labels=y, device="cpu")
    inputs = InputsInfo(source="tensors", path=None, samples=len(x), batches=len(batches),
                        batch_size=batch, shape=list(x.shape[1:]))
    return finalize(model, state, ThresholdConfig(), CheckpointInfo(None, None, "in-memory"),
                    inputs, effects=effects)


def block_conditions(condition: str, seed: int, family: str = "",
                     task: str = "") -> tuple[str, str, str]:
    """The conditions of the three blocks; a mixed model's rotate with the family and task."""
    if condition == "mixed":
        turn = seed + (list(FAMILIES).index(family) if family in FAMILIES else 0) + (
            list(TASKS).index(task) if task in TASKS else 0)
        mix = MIXES[turn % len(MIXES)]
        return (applicable(mix[0], family), applicable(mix[1], family),
                applicable(mix[2], family))
    return (condition, condition, condition)


def applicable(condition: str, family: str) -> str:
    """`condition`, or the next broken condition the family can be put in (a mixed model of a
    family that cannot be suppressing takes the next one instead)."""
    fam = FAMILIES.get(family)
    if fam is None or condition in fam.conditions:
        return condition
    start = BROKEN.index(condition) if condition in BROKEN else 0
    for k in range(1, len(BROKEN) + 1):
        other = BROKEN[(start + k) % len(BROKEN)]
        if other in fam.conditions:
            return other
    return "healthy"


def can_build(family: str, condition: str) -> bool:
    """Whether the study builds this (family, model condition) cell."""
    conds = FAMILIES[family].conditions
    return condition in conds or (condition == "mixed" and len(conds) > 1)


def run_model(task: str, split: Split, family: str, condition: str, seed: int,
              epochs: int) -> dict[str, Any]:
    """Build, break, train and inspect one model; the record the study keeps."""
    torch.manual_seed(seed)
    model = Net(FAMILIES[family].make)
    labels = dict(zip(model.blocks(), block_conditions(condition, seed, family, task),
                      strict=True))
    wd = {name: prepare(block, labels[name]) for name, block in model.blocks().items()}
    reached = {name: saturate(model, block, split.x_train[:BATCH_SIZE])
               for name, block in model.blocks().items() if labels[name] == "saturated"}
    init = {name: [p.detach().clone() for p in block.parameters()]
            for name, block in model.blocks().items()}
    seconds = train(model, split, wd, epochs, seed)
    with torch.no_grad():
        acc = float((model(split.x_test).argmax(1) == split.y_test).float().mean())
    effects = own_effect(model, split.x_test, split.y_test)
    for name, block in model.blocks().items():
        before = init[name]
        num = sum(float((p.detach() - q).double().pow(2).sum())
                  for p, q in zip(block.parameters(), before, strict=True))
        den = sum(float(q.double().pow(2).sum()) for q in before)
        effects[name]["moved"] = math.sqrt(num / den) if den else None
        if name in reached:
            effects[name]["saturation_at_init"] = reached[name]
    report = inspect_model(model, split.x_test, split.y_test)
    return {"task": task, "family": family, "condition": condition, "seed": seed,
            "accuracy": acc, "seconds": seconds, "labels": labels, "effects": effects,
            "report": report.to_dict()}


# ---------------------------------------------------------------------------------------------
# Rows and tables


@dataclass(frozen=True)
class BlockRow:
    """One block: its label, its measured effect and what the package said."""

    model: str
    name: str
    label: str
    matters: bool
    rel_l2: float
    acc_drop: float
    tool_effect: float | None
    status: str
    findings: tuple[tuple[str, str], ...]  # (code, severity)
    min_std: dict[str, float] = field(default_factory=dict)  # mask kind -> std

    @property
    def flagged(self) -> bool:
        return self.status in ("warn", "fail")

    def codes(self, severity: str | None = None) -> list[str]:
        return sorted({c for c, s in self.findings if severity is None or s == severity})


def label_of(condition: str, e: dict[str, Any]) -> str:
    """The label a block is counted under: its condition, unless the study's own measures say
    the condition did not take (see `LABELS`)."""
    if condition == "healthy" and e.get("moved") is not None and e["moved"] < MOVED_MIN:
        return BARELY
    if condition == "collapsed" and matters(e):
        return UNBROKEN
    if condition == "saturated" and e.get("gate_ends") is not None and e["gate_ends"] < 0.5:
        return UNBROKEN
    return condition


def rows_of(records: list[dict[str, Any]], config: ThresholdConfig) -> list[BlockRow]:
    """Every block of every record, judged with `config` (the saved statistics, rules re-run)."""
    rows = []
    for r in records:
        report = judge(Report.from_dict(r["report"]), config)
        model = f"{r['task']}/{r['family']}/{r['condition']}/{r['seed']}"
        for b in report.blocks:
            e = r["effects"][b.name]
            stds: dict[str, float] = {}
            for k, m in b.masks.items():
                if m.std is not None:
                    kind = k.split("#")[0]
                    stds[kind] = min(stds.get(kind, m.std), m.std)
            rows.append(BlockRow(
                model=model, name=b.name, label=label_of(r["labels"][b.name], e),
                matters=matters(e),
                rel_l2=e["rel_l2"], acc_drop=e["acc_drop"],
                tool_effect=b.effect.constant.rel_l2 if b.effect else None, status=b.status,
                findings=tuple((f.code, f.severity) for f in b.findings if f.severity != "info"),
                min_std=stds))
    return rows


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else "-"


def _spread(values: Iterable[float | None], fmt: str = "{:.3f}") -> str:
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return "-"
    return f"{fmt.format(statistics.median(vals))} ({fmt.format(vals[0])}-{fmt.format(vals[-1])})"


def confusion_table(rows: list[BlockRow]) -> str:
    lines = ["| label | blocks | matter | ok | warn | fail | flagged |",
             "|---|---|---|---|---|---|---|"]
    for label in LABELS:
        rs = [r for r in rows if r.label == label]
        if not rs:
            continue
        c = Counter(r.status for r in rs)
        flagged = sum(r.flagged for r in rs)
        lines.append(f"| {label} | {len(rs)} | {sum(r.matters for r in rs)} | {c['ok']} "
                     f"| {c['warn']} | {c['fail']} | {_share(flagged, len(rs))} |")
    healthy = [r for r in rows if r.label == "healthy"]
    hm = [r for r in healthy if r.matters]
    lines.append(f"| healthy, masks matter | {len(hm)} | {len(hm)} "
                 f"| {sum(r.status == 'ok' for r in hm)} | {sum(r.status == 'warn' for r in hm)} "
                 f"| {sum(r.status == 'fail' for r in hm)} | {_share(sum(r.flagged for r in hm), len(hm))} |")
    broken = [r for r in rows if r.label in BROKEN]
    lines.append(f"| all broken | {len(broken)} | {sum(r.matters for r in broken)} "
                 f"| {sum(r.status == 'ok' for r in broken)} "
                 f"| {sum(r.status == 'warn' for r in broken)} "
                 f"| {sum(r.status == 'fail' for r in broken)} "
                 f"| {_share(sum(r.flagged for r in broken), len(broken))} |")
    return "\n".join(lines)


def findings_table(rows: list[BlockRow]) -> str:
    """Per finding code and label: on how many blocks it fired (warn or fail)."""
    codes = sorted({c for r in rows for c in r.codes()})
    lines = ["| finding | " + " | ".join(LABELS) + " |", "|---|" + "---|" * len(LABELS)]
    for code in codes:
        cells = []
        for label in LABELS:
            rs = [r for r in rows if r.label == label]
            w = sum(code in r.codes("warn") for r in rs)
            f = sum(code in r.codes("fail") for r in rs)
            cells.append(f"{w}w {f}f" if w or f else "-")
        lines.append(f"| `{code}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _axis_std(r: BlockRow) -> float | None:
    stds = [r.min_std[k] for k in ("a_h", "a_w") if k in r.min_std]
    return min(stds) if stds else None


def stats_table(rows: list[BlockRow]) -> str:
    lines = ["| label | blocks | own effect: logits change | own effect: accuracy drop "
             "| tool's effect | a_h/a_w std | channel std | spatial std |",
             "|---|---|---|---|---|---|---|---|"]
    for label in LABELS:
        rs = [r for r in rows if r.label == label]
        if not rs:
            continue
        lines.append(
            f"| {label} | {len(rs)} | {_spread(r.rel_l2 for r in rs)} "
            f"| {_spread(r.acc_drop for r in rs)} | {_spread(r.tool_effect for r in rs)} "
            f"| {_spread((_axis_std(r) for r in rs), '{:.4f}')} "
            f"| {_spread((r.min_std.get('channel') for r in rs), '{:.4f}')} "
            f"| {_spread((r.min_std.get('spatial') for r in rs), '{:.4f}')} |")
    return "\n".join(lines)


def _row_line(r: BlockRow) -> str:
    found = ", ".join(f"{c} ({s})" for c, s in r.findings) or "-"
    tool = "-" if r.tool_effect is None else f"{r.tool_effect:.3f}"
    return (f"| {r.model} | {r.name} | {r.label} | {r.rel_l2:.3f} / {r.acc_drop:+.3f} | {tool} "
            f"| {r.status} | {found} |")


_HEAD = ("| model | block | label | own effect (logits / accuracy) | tool's effect | status "
         "| findings |\n|---|---|---|---|---|---|---|")


def listing(title: str, rows: list[BlockRow]) -> str:
    if not rows:
        return f"#### {title}\n\nNone."
    return f"#### {title} ({len(rows)})\n\n" + _HEAD + "\n" + "\n".join(_row_line(r) for r in rows)


def disagreements(rows: list[BlockRow]) -> list[BlockRow]:
    """Blocks where the verdict and the study's measured effect disagree: a block whose masks
    matter failed as dead (`dead_weight`), or a block whose masks do not matter has no finding."""
    out = []
    for r in rows:
        says_dead = "dead_weight" in r.codes()
        if (r.matters and says_dead) or (not r.matters and r.label in BROKEN and not r.flagged):
            out.append(r)
    return out


def build_section(records: list[dict[str, Any]], rows: list[BlockRow], meta: dict[str, Any]) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in meta.items())
    healthy = [r for r in rows if r.label == "healthy"]
    broken = [r for r in rows if r.label in BROKEN]
    fails_matter = [r for r in rows if r.status == "fail" and r.matters]
    models = Counter((r["family"], r["task"]) for r in records)
    fam = Counter(r["family"] for r in records)
    return "\n\n".join([
        BEGIN,
        f"Generated by `python scripts/validate.py` ({settings}).",
        f"{len(records)} models ({', '.join(f'{k} {v}' for k, v in sorted(fam.items()))}; "
        f"{len({t for _, t in models})} tasks), {len(rows)} blocks.",
        "### Confusion table: label x status\n\n`matter`: the study's own constant-gate "
        f"replacement costs >= {MATTERS_ACC:.0%} accuracy or changes the logits by >= "
        f"{MATTERS_L2:.0%}. `flagged`: warn or fail.\n\n" + confusion_table(rows),
        "### Findings per label\n\nBlocks on which the finding fired (w: warn, f: fail; info "
        "findings are not counted).\n\n" + findings_table(rows),
        "### Statistics per label\n\nMedian (range) over the blocks.\n\n" + stats_table(rows),
        "### False alarms, misses, fails on blocks that matter, disagreements\n\n"
        + "\n\n".join([
            listing("False alarms: healthy blocks flagged", [r for r in healthy if r.flagged]),
            listing("Misses: broken blocks not flagged", [r for r in broken if not r.flagged]),
            listing("Fails on blocks whose masks matter", fails_matter),
            listing("Disagreements with the measured effect", disagreements(rows)),
            listing("Barely trained: healthy blocks whose parameters moved less than "
                    f"{MOVED_MIN:.0%} in training", [r for r in rows if r.label == BARELY]),
            listing("Did not break: collapsed blocks whose masks still matter, saturated "
                    "blocks whose gates do not sit at 0 or 1", [r for r in rows
                                                               if r.label == UNBROKEN]),
        ]),
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


def summary(rows: list[BlockRow]) -> dict[str, Any]:
    """The numbers the issue's "done when" is judged on."""
    hm = [r for r in rows if r.label == "healthy" and r.matters]
    broken = [r for r in rows if r.label in BROKEN]
    untrained = [r for r in rows if r.label == "untrained"]
    return {
        "healthy_matter": len(hm),
        "healthy_matter_fail": sum(r.status == "fail" for r in hm),
        "healthy_matter_warn": sum(r.status == "warn" for r in hm),
        "broken": len(broken),
        "broken_flagged": sum(r.flagged for r in broken),
        "untrained": len(untrained),
        "untrained_flagged": sum(r.flagged for r in untrained),
    }


# ---------------------------------------------------------------------------------------------


def plan(families: list[str], tasks: list[str], conditions: list[str],
         seeds: int) -> list[tuple[str, str, str, int]]:
    return [(t, f, c, s) for t in tasks for f in families for c in conditions
            for s in range(seeds) if can_build(f, c)]


_SPLITS: dict[tuple[str, int, int], Split] = {}


def _one(job: tuple[str, str, str, int, int, int, int]) -> tuple[dict[str, Any], float]:
    """One model in a worker (its tasks generated once per process, one thread each)."""
    task, family, condition, seed, epochs, n_train, n_test = job
    torch.set_num_threads(1)
    key = (task, n_train, n_test)
    if key not in _SPLITS:
        _SPLITS[key] = load_task(task, n_train, n_test)
    t0 = time.perf_counter()
    rec = run_model(task, _SPLITS[key], family, condition, seed, epochs)
    return rec, time.perf_counter() - t0


def run(todo: list[tuple[str, str, str, int]], epochs: int, n_train: int, n_test: int,
        log: Callable[[str], None] = print,
        save: Callable[[list[dict[str, Any]]], None] | None = None,
        jobs: int = 1) -> list[dict[str, Any]]:
    """Train and inspect every (task, family, condition, seed), in `jobs` processes; `save`
    gets the records after each model. Records come back in `todo`'s order."""
    work = [(t, f, c, s, epochs, n_train, n_test) for t, f, c, s in todo]
    done: dict[int, dict[str, Any]] = {}
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        # fork: the workers get this module as it is (also when it was loaded from its path, as
        # the tests do); each sets one thread before any torch work (`_one`)
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_one, job): i for i, job in enumerate(work)}
            for fut in as_completed(futures):
                rec, secs = fut.result()
                done[futures[fut]] = rec
                _log_model(rec, secs, log)
                if save is not None:
                    save([done[i] for i in sorted(done)])
    else:
        for i, job in enumerate(work):
            rec, secs = _one(job)
            done[i] = rec
            _log_model(rec, secs, log)
            if save is not None:
                save([done[k] for k in sorted(done)])
    return [done[i] for i in sorted(done)]


def _log_model(rec: dict[str, Any], secs: float, log: Callable[[str], None]) -> None:
    task, family, condition, seed = rec["task"], rec["family"], rec["condition"], rec["seed"]
    report = Report.from_dict(rec["report"])
    log(f"{task:<8} {family:<14} {condition:<11} s{seed} acc {rec['accuracy']:.3f} "
        f"{secs:5.1f}s | " + "; ".join(
            f"{rec['labels'][b.name][:4]} eff {rec['effects'][b.name]['rel_l2']:.2f}/"
            f"{rec['effects'][b.name]['acc_drop']:+.2f} {b.status}"
            f"[{','.join(sorted({f.code for f in b.findings}))}]" for b in report.blocks))


QUICK = dict(families=["coordatt", "cbam", "se"], tasks=["shapes"],
             conditions=["healthy", "collapsed", "untrained", "saturated"], seeds=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--conditions", nargs="+", default=list(MODEL_CONDITIONS),
                        choices=list(MODEL_CONDITIONS))
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell (default 1)")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"training epochs (default {EPOCHS})")
    parser.add_argument("--jobs", type=int, default=2,
                        help="models trained side by side, one process and thread each (default 2)")
    parser.add_argument("--train", type=int, default=1000, help="training images per task")
    parser.add_argument("--test", type=int, default=400, help="test images per task")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset (3 families, 1 task, 4 conditions)")
    parser.add_argument("--out", type=Path, default=DOC, help="page to update")
    parser.add_argument("--data", type=Path, default=None,
                        help="save the raw records here (JSON), or read them with --rejudge")
    parser.add_argument("--rejudge", action="store_true",
                        help="rebuild the tables from --data with the current rules, no training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.rejudge:
        if args.data is None:
            parser.error("--rejudge needs --data")
        saved = json.loads(args.data.read_text())
        records, meta = saved["records"], saved["meta"]
    else:
        if args.quick:
            args.families, args.tasks = QUICK["families"], QUICK["tasks"]
            args.conditions, args.seeds = QUICK["conditions"], QUICK["seeds"]
        todo = plan(args.families, args.tasks, args.conditions, args.seeds)
        meta: dict[str, Any] = {"epochs": args.epochs, "train/test images":
                                f"{args.train}/{args.test}", "seeds": args.seeds,
                                "torch": torch.__version__, "threads": 1}
        data = args.data

        def save(records: list[dict[str, Any]], final: dict[str, Any] | None = None) -> None:
            if data is not None:
                now = final or {**meta, "models": len(records),
                                "run time": f"{time.perf_counter() - t0:.0f} s"}
                data.write_text(json.dumps({"meta": now, "records": records}))

        records = run(todo, args.epochs, args.train, args.test, save=save, jobs=args.jobs)
        meta.update({"models": len(records), "run time": f"{time.perf_counter() - t0:.0f} s",
                     "jobs": args.jobs, "load average": f"{os.getloadavg()[0]:.1f}"})
        save(records, meta)
    rows = rows_of(records, ThresholdConfig())
    write_doc(build_section(records, rows, meta), args.out)
    print(json.dumps(summary(rows)))
    print(f"wrote {args.out}: {len(records)} models, {len(rows)} blocks in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
