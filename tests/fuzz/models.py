"""Tiny models for the fuzz suite: a healthy one, and ones whose factory or forward pass fails
in the ways user code does (each importable as `tests.fuzz.models:NAME` for `--model`)."""

from __future__ import annotations

import torch
from torch import nn


class SE(nn.Module):
    """Squeeze-and-excitation: a channel mask from the pooled input."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, 2, 1)
        self.fc2 = nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * w


class TinyNet(nn.Module):
    """conv -> SE -> pool -> linear."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.att = SE(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.att(self.stem(x)).mean((2, 3)))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


class _Raising(TinyNet):
    """Raises `exc` from inside the attention block from the `after`-th forward call on."""

    def __init__(self, exc: BaseException, after: int = 0) -> None:
        super().__init__()
        self.exc = exc
        self.after = after
        self.calls = 0
        inner = self.att.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > self.after:
                raise self.exc
            return inner(x)

        self.att.forward = forward  # type: ignore[method-assign]


def forward_value_error() -> nn.Module:
    return _Raising(ValueError("bad value in forward"))


def forward_key_error() -> nn.Module:
    return _Raising(KeyError("missing_key"))


def forward_assertion() -> nn.Module:
    return _Raising(AssertionError("shape assumption"))


def forward_fourth_batch() -> nn.Module:
    """Fails on a later batch than the first (after discovery and the memory probe)."""
    return _Raising(IndexError("list index out of range"), after=5)


def forward_not_implemented() -> nn.Module:
    return _Raising(NotImplementedError("op"))


def factory_value_error() -> nn.Module:
    raise ValueError("factory: unknown variant")


def factory_key_error() -> nn.Module:
    raise KeyError("variant")


def factory_runtime_error() -> nn.Module:
    raise RuntimeError("factory: CUDA not compiled")


def factory_system_exit() -> nn.Module:
    raise SystemExit(7)


def factory_returns_int() -> int:
    return 3


class NanNet(TinyNet):
    """Its mask is NaN everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * float("nan"))


def nan_masks() -> nn.Module:
    torch.manual_seed(0)
    return NanNet()


class _SignalNet(TinyNet):
    """Sends `signum` to its own process from inside its first forward pass (a CI runner's
    cancel arriving mid-run), then goes on as if nothing happened."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        os.kill(os.getpid(), self.signum)
        return super().forward(x)


def sigterm_in_forward() -> nn.Module:
    import signal

    return _SignalNet(signal.SIGTERM)


def sigint_in_forward() -> nn.Module:
    import signal

    return _SignalNet(signal.SIGINT)


class _Slow(TinyNet):
    """Sleeps in every forward pass (for a signal sent from outside); creates the file
    `$FUZZ_STARTED` names on its first pass, so the sender knows the run is under way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import time

        started = os.environ.get("FUZZ_STARTED")
        if started and not os.path.exists(started):
            open(started, "w").close()
        time.sleep(0.05)
        return super().forward(x)


def slow() -> nn.Module:
    torch.manual_seed(0)
    return _Slow()
