"""Where the model runs and in which precision: `--device` and `--half`.

`resolve_device("auto")` picks CUDA when torch sees a GPU (under torchrun, the GPU of the local
rank), else the CPU. `--half` runs the model in float16 (or bfloat16) on CUDA only; the
statistics stay float32/float64 whatever the model's precision (see `coordatt_diag.stats.masks`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from coordatt_diag.errors import UsageError, opt

_HALF = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
         "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    """The resolved device and model dtype of a run."""

    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def _cuda_indices(text: str) -> list[int] | None:
    """The GPU indices of an Ultralytics-style `--device` ("0", "0,1"; "cuda:N" too), or None
    for another spelling."""
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m:
        return [int(m.group(1))] if m.group(1) is not None else []
    if re.fullmatch(r"\d+(\s*,\s*\d+)*,?", text):
        return [int(part) for part in text.split(",") if part.strip()]
    return None


def resolve_device(spec: str | None) -> torch.device:
    """Turn `--device` into a checked device.

    Spellings: cpu, mps, auto (None means auto), cuda, cuda:N, and a GPU index or list as
    Ultralytics takes them ("0", "0,1"). One process runs on one GPU: from a list it takes the
    local rank's entry (under torchrun, rank r gets the r-th GPU of the list; alone, the first).

    Raises:
        UsageError: an unknown spelling, or a device this machine does not have.
    """
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    indices = _cuda_indices(text)
    if indices is not None:
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "torch sees no GPU")
            raise UsageError(f"{opt('device', spec)}: CUDA is not available ({why}); use "
                             f"{opt('device', 'cpu')} or {opt('device', 'auto')}")
        count = torch.cuda.device_count()
        index = indices[_local_rank() % len(indices)] if indices else _local_rank() % count
        if index >= count:
            raise UsageError(f"{opt('device', spec)}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"{opt('device', 'mps')}: MPS is not available here; use {opt('device', 'cpu')}")
        return torch.device("mps")
    raise UsageError(f"{opt('device', spec)} is not a device: use cpu, cuda, cuda:N, a GPU index "
                     "(0, or 0,1) or auto")


def resolve_placement(device: str | None, half: bool = False,
                      half_dtype: str = "float16") -> Placement:
    """`--device` and `--half` / `--half-dtype` together.

    Raises:
        UsageError: as `resolve_device`; `--half` without a CUDA device; an unknown dtype.
    """
    dtype = _HALF.get(half_dtype.strip().lower())
    if dtype is None:
        raise UsageError(f"{opt('half_dtype', half_dtype)}: use float16 or bfloat16")
    if not half and dtype is not torch.float16:
        raise UsageError(f"{opt('half_dtype', half_dtype)} applies only with {opt('half', True)}: "
                         f"add {opt('half', True)} (CUDA) or drop {opt('half_dtype')}")
    dev = resolve_device(device)
    if not half:
        return Placement(dev, torch.float32)
    if dev.type != "cuda":
        raise UsageError(f"{opt('half', True)} needs a CUDA device (the run is on {dev}); half precision on "
                         f"a CPU is slow and not what the model runs in: drop {opt('half', True)}")
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UsageError(f"{opt('half_dtype', 'bfloat16')}: {torch.cuda.get_device_name(dev)} does not "
                         f"support bfloat16; use {opt('half_dtype', 'float16')}")
    return Placement(dev, dtype)
