"""A real demo pair: two small Coordinate Attention CNNs trained on scikit-learn's digits.

``examples/digits_healthy.pt`` and ``examples/digits_collapsed.pt`` hold two instances of the
network built by :func:`digits_net`, trained by ``scripts/make_demo.py`` with the same seed, data
and schedule (SGD, lr 0.1, momentum 0.9, cosine, 12 epochs) and differing only in weight decay:

* healthy: weight decay 5e-4; the a_h / a_w masks of every block vary (std about 0.08-0.2);
* collapsed: weight decay 1e-2; the masks of ``stage1.att`` and ``stage2.att`` are nearly
  constant (std about 0.015) although the accuracy is the same (about 0.99): the strong decay
  shrinks ``conv_h`` / ``conv_w`` until the masks are little more than ``sigmoid(bias)``.

The inputs are the 8x8 digits of ``sklearn.datasets.load_digits`` (bundled with scikit-learn,
no download), scaled to [0, 1], upsampled bilinearly to 16x16 and normalised with the mean and
standard deviation of the training split (:func:`load_digits_split`).
``examples/digits_samples.pt`` holds 128 held-out samples preprocessed that way and
``examples/digits_labels.pt`` their labels, so the pair can be inspected with::

    coordatt-diag inspect examples/digits_collapsed.pt --model coordatt_diag.demo:digits_net \\
        --tensors examples/digits_samples.pt

scikit-learn is only needed to (re)build the data (a dev extra, imported lazily); the model
itself only needs torch. See ``docs/demo.md`` for the measured figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from coordatt_diag.blocks import CoordinateAtt

__all__ = [
    "IMG_SIZE",
    "NUM_CLASSES",
    "DigitsNet",
    "DigitsSplit",
    "digits_net",
    "load_digits_split",
    "preprocess_digits",
]

IMG_SIZE = 16
"""Side of the (square) model input: the 8x8 digits are upsampled to this size."""

NUM_CLASSES = 10


class _Stage(nn.Sequential):
    """conv 3x3 -> batch norm -> ReLU -> CoordinateAtt (children ``conv``, ``bn``, ``relu``,
    ``att``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.att = CoordinateAtt(out_channels)


class DigitsNet(nn.Module):
    """Conv stem + three stages, each ending in a reference ``CoordinateAtt``, + linear head.

    For a (B, 1, 16, 16) input: stem (16 ch, 16x16) -> ``stage1`` (32 ch, 16x16) -> max-pool ->
    ``stage2`` (64 ch, 8x8) -> max-pool -> ``stage3`` (64 ch, 4x4) -> global average -> ``head``
    (10 logits). The attention blocks are ``stage1.att``, ``stage2.att`` and ``stage3.att``.

    Args:
        widths: Channels of the stem and of stages 1 and 2 (stage 3 keeps the last width).
        num_classes: Output logits.
    """

    def __init__(
        self, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = NUM_CLASSES
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(1, w0, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=False),
        )
        self.stage1 = _Stage(w0, w1)
        self.stage2 = _Stage(w1, w2)
        self.stage3 = _Stage(w2, w2)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for normalised digits (B, 1, 16, 16)."""
        x = self.stem(x)
        x = self.pool(self.stage1(x))
        x = self.pool(self.stage2(x))
        x = self.stage3(x)
        return self.head(x.mean(dim=(2, 3)))


def digits_net() -> nn.Module:
    """The demo model, untrained (factory for ``--model coordatt_diag.demo:digits_net``)."""
    return DigitsNet()


class DigitsSplit(NamedTuple):
    """Train / held-out split of the digits, preprocessed as the model expects.

    ``x_*`` are float32 (N, 1, 16, 16), ``y_*`` int64 (N,); ``mean`` / ``std`` are the
    normalisation constants (computed on the training split after scaling to [0, 1] and
    upsampling).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float


def preprocess_digits(
    images: torch.Tensor, mean: float = 0.0, std: float = 1.0, size: int = IMG_SIZE
) -> torch.Tensor:
    """Raw digits (N, 64) or (N, 8, 8) in [0, 16] -> float32 (N, 1, size, size), normalised.

    Scales to [0, 1], upsamples bilinearly (``align_corners=False``), then ``(x - mean) / std``.
    """
    x = images.to(torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - mean) / std


def load_digits_split(seed: int = 0, test_size: float = 0.2) -> DigitsSplit:
    """Load ``sklearn.datasets.load_digits`` (offline) and split it, stratified.

    Args:
        seed: ``random_state`` of ``train_test_split``.
        test_size: Held-out fraction (0.2: 1437 train, 360 held-out samples).

    Returns:
        The preprocessed split (see :class:`DigitsSplit`), normalised with the training split's
        mean and standard deviation.

    Raises:
        ImportError: scikit-learn is not installed (``pip install scikit-learn``).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits demo needs scikit-learn: pip install scikit-learn "
            "(or the package's dev extra)"
        ) from exc

    data, target = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        data, target, test_size=test_size, stratify=target, random_state=seed
    )
    train = preprocess_digits(torch.as_tensor(x_tr))
    test = preprocess_digits(torch.as_tensor(x_te))
    mean, std = float(train.mean()), float(train.std())
    return DigitsSplit(
        x_train=(train - mean) / std,
        y_train=torch.as_tensor(y_tr, dtype=torch.int64),
        x_test=(test - mean) / std,
        y_test=torch.as_tensor(y_te, dtype=torch.int64),
        mean=mean,
        std=std,
    )


def train_sgd(model: nn.Module, split: DigitsSplit, epochs: int, weight_decay: float, seed: int,
              lr: float = 0.1, momentum: float = 0.9, batch_size: int = 64,
              on_epoch: Callable[[int], object] | None = None) -> float:
    """The demo's schedule: SGD with momentum, cosine decay per step, shuffled with `seed`.

    Trains the parameters that require gradients, leaves the model in eval mode and returns the
    training time in seconds (used by ``scripts/make_demo.py`` and ``scripts/validate.py``).
    ``on_epoch`` is called after each epoch with its number (from 0), e.g. a mask watch's
    ``step``; a truthy ``stop`` attribute of what it returns ends the training early.
    """
    import math
    import time

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    x, y = split.x_train, split.y_train
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None and getattr(on_epoch(epoch), "stop", False):
            break
    model.eval()
    return time.perf_counter() - t0
