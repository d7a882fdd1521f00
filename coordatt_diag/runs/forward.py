"""The model's forward pass as every run makes it: eval mode restored afterwards, the model's
device and dtype, and one mapping of forward-pass errors to input errors. Below both
`coordatt_diag.runs.inspect` and `coordatt_diag.runs.effect`, which share it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from coordatt_diag.errors import DiagError, InputError, one_line, opt


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


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_USER_PARTS = (os.path.join(_PACKAGE, "blocks") + os.sep, os.path.join(_PACKAGE, "demo.py"))


def raised_by_us(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc` is coordatt-diag's own code (a hook, the memory probe:
    a bug, exit 4) rather than the model's, torch's or a third-party package's."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    name = os.path.abspath(last.tb_frame.f_code.co_filename)
    return name.startswith(_PACKAGE + os.sep) and not name.startswith(_USER_PARTS)


@contextlib.contextmanager
def _forward_errors(batch: torch.Tensor) -> Iterator[None]:
    """An error of the model's forward pass becomes an input error naming the batch.

    A RuntimeError or TypeError is mostly a shape or dtype mismatch (the inputs do not fit); any
    other exception the model's code raises (ValueError, KeyError, an assertion, sys.exit) is its
    own failure on these inputs, also exit 3. One raised inside coordatt-diag is a bug and passes.
    """
    try:
        yield
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"the model's forward pass failed on a batch of shape {tuple(batch.shape)}: "
            f"{_first(exc)}; check {opt('imgsz')}, the channel count and the input tensors"
        ) from exc
    except (Exception, SystemExit) as exc:
        if isinstance(exc, DiagError) or (isinstance(exc, Exception) and raised_by_us(exc)):
            raise
        raise InputError(
            f"the model's forward pass raised {type(exc).__name__} on a batch of shape "
            f"{tuple(batch.shape)}: {_first(exc)}; the model's code fails on these inputs"
        ) from exc


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, SystemExit):
        text = f"it called sys.exit({exc.code!r})"
    return one_line(text or type(exc).__name__, 240)


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
