"""Multi-process runs under `torchrun`: each rank takes its shard, the accumulators are merged.

`torchrun --nproc-per-node N -m coordatt_diag inspect ...` starts N copies of the command with
`RANK`, `WORLD_SIZE`, `LOCAL_RANK` and a rendezvous address in the environment. `group()` joins
the process group (gloo on CPU, nccl on CUDA) the first time a run needs it. Every rank reads the
same input stream and runs every N-th batch (batch i on rank i mod N), the streamed accumulators
are gathered with `all_gather_object` and merged in rank order on every rank, so every rank
holds the same report (and `check` exits with the same code everywhere); only rank 0 prints and
writes (`is_writer`). An error on one rank reaches every rank through the same collective, so
no rank waits for a partner that has failed.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from coordatt_diag.errors import DiagError, InputError

TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Group:
    """This process's place in a multi-process run."""

    rank: int
    world: int
    backend: str

    def owns(self, index: int) -> bool:
        """Whether batch number `index` (from 0) is this rank's."""
        return index % self.world == self.rank


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def launched_world() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return _env_int("WORLD_SIZE") or 1


def is_writer() -> bool:
    """Whether this process prints and writes files: always, except ranks > 0 under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return (_env_int("RANK") or 0) == 0


def group(device: torch.device) -> Group | None:
    """Join (once) the process group torchrun set up; None for a single-process run."""
    if launched_world() <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed: run without torchrun")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        atexit.register(_leave)
    return Group(rank=dist.get_rank(), world=dist.get_world_size(),
                 backend=str(dist.get_backend()))


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        # leave together: a rank that tore its gloo group down while a peer was still working
        # aborted now and then ("terminate called without an active exception", SIGABRT)
        dist.barrier()
        dist.destroy_process_group()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (pickled; move tensors to the CPU first)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def error_payload(exc: BaseException) -> tuple[str, str, int]:
    """What a failed rank tells the others: its error's class name, message and exit code."""
    code = exc.exit_code if isinstance(exc, DiagError) else 4
    return (type(exc).__name__, exc.raw if isinstance(exc, DiagError) else str(exc), code)


class RankError(DiagError):
    """A rank of a multi-process run failed; carries that rank's exit code and message."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def raise_first_error(payloads: list[tuple[str, str, int] | None]) -> None:
    """Raise the first rank's error (in rank order) on every rank, if any rank failed."""
    for rank, err in enumerate(payloads):
        if err is not None:
            name, message, code = err
            prefix = f"rank {rank}: " if code != 4 else f"rank {rank}: {name}: "
            raise RankError(prefix + message, code)


def to_device(obj: Any, device: torch.device | str) -> Any:
    """`obj` with every tensor it holds moved to `device` (this package's objects in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, torch.nn.Module):
        return obj  # never touch a model
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    if type(obj).__module__.startswith("coordatt_diag.") and hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            object.__setattr__(obj, key, to_device(value, device))
    return obj
