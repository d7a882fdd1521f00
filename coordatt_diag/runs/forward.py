"""The model's forward pass as every run makes it: eval mode restored afterwards, the model's
device and dtype, and one mapping of forward-pass errors to input errors. Below both
`coordatt_diag.runs.inspect` and `coordatt_diag.runs.effect`, which share it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from coordatt_diag.errors import InputError, opt


@contextlib.contextmanager
def preserved_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the duration, then restore every module's flag."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


@contextlib.contextmanager
def _forward_errors(batch: torch.Tensor) -> Iterator[None]:
    """A RuntimeError of the model's forward pass becomes an input error naming the batch."""
    try:
        yield
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["RuntimeError"])[0][:240]
        raise InputError(
            f"the model's forward pass failed on a batch of shape {tuple(batch.shape)}: {first}; "
            f"check {opt('imgsz')}, the channel count and the input tensors"
        ) from exc


def _forward(model: nn.Module, batch: torch.Tensor) -> Any:
    with _forward_errors(batch):
        return model(batch)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
