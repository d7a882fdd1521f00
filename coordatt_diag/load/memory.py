"""Will a batch fit? Measure the activation memory of two samples, check the batch before the run.

The statistics themselves take a few numbers per mask whatever the number of batches (see
`coordatt_diag.stats.masks`): what grows with the inputs is the model's own forward pass, linearly in
the batch size. `measure_activations` runs two samples under a dispatch mode that follows every
tensor the forward pass creates until it is freed and keeps the peak of the live bytes (on any
device, without an allocator's help); `check_batch` scales it to the batch and compares it with
the memory free on the device (CUDA: `mem_get_info`; CPU: MemAvailable, bounded by the cgroup
limit), so a batch that would not fit is refused before the run, with a batch size that fits.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from coordatt_diag.errors import InputError, opt

#: Headroom over the measured peak: allocator rounding, workspaces, the next batch in flight.
MARGIN = 1.3
#: Set to 0 to skip the check (when the estimate is wrong for an unusual model).
ENV_SWITCH = "COORDATT_DIAG_MEMORY_CHECK"

GIB = 1024**3


class _LiveBytes(TorchDispatchMode):
    """Follows the storages that ops create; `peak` is the most bytes alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # data_ptr -> [tensor objects alive, bytes]

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            self.live -= entry[1]
            del self._refs[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if ptr == 0 or size == 0:
                continue
            entry = self._refs.get(ptr)
            if entry is None:
                self._refs[ptr] = [1, size]
                self.live += size
                self.peak = max(self.peak, self.live)
            else:
                entry[0] += 1
            weakref.finalize(t, self._release, ptr)
        return out


@dataclass(frozen=True)
class MemoryEstimate:
    """What a batch needs on the device, and what the device has free."""

    per_sample: int  # peak activation bytes of one sample's forward pass
    batch_size: int
    input_bytes: int  # the batch tensor itself (already allocated when the check runs)
    need: int  # MARGIN * per_sample * batch_size: what the forward pass adds
    available: int | None  # free bytes on the device now, besides the batch (None: unknown)

    @property
    def fits(self) -> bool:
        return self.available is None or self.need <= self.available

    def largest_batch(self) -> int:
        """The largest batch size that fits (0 when not even one sample does)."""
        if self.available is None:
            return self.batch_size
        # a smaller batch also frees part of the batch tensor itself
        per = MARGIN * self.per_sample + self.input_bytes / max(self.batch_size, 1)
        budget = self.available + self.input_bytes
        return min(int(budget // per), self.batch_size) if per > 0 else self.batch_size


def measure_activations(model: nn.Module, sample: torch.Tensor) -> int:
    """Peak bytes of activations alive at once while `model` runs `sample`, per sample."""
    mode = _LiveBytes()
    with torch.inference_mode(), mode:
        model(sample)
    return -(-mode.peak // max(int(sample.shape[0]), 1))


def _cgroup_free() -> int | None:
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max":
                return None
            cap, used = int(text), int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap < 1 << 60:  # "no limit" is a huge number in cgroup v1
            return max(cap - used, 0)
    return None


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` now (None when it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    free: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        free = None
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    group = _cgroup_free()
    if group is not None:
        free = group if free is None else min(free, group)
    return free


def estimate(model: nn.Module, probe: torch.Tensor, batch: torch.Tensor) -> MemoryEstimate:
    """Measure `probe` (a few samples) and scale to `batch`'s size on the model's device."""
    per_sample = measure_activations(model, probe)
    b = int(batch.shape[0])
    input_bytes = batch.numel() * batch.element_size()
    need = int(MARGIN * per_sample * b)
    return MemoryEstimate(per_sample=per_sample, batch_size=b, input_bytes=input_bytes,
                          need=need, available=available_bytes(batch.device))


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.0f} MiB"


def check_batch(model: nn.Module, probe: torch.Tensor, batch: torch.Tensor) -> MemoryEstimate:
    """Refuse a batch that would not fit in the device's free memory, before the run starts.

    Raises:
        InputError: the batch needs more than the free memory; the message gives a batch size
            that fits.
    """
    est = estimate(model, probe, batch)
    if est.fits or os.environ.get(ENV_SWITCH, "1") == "0":
        return est
    shape = "x".join(str(s) for s in batch.shape[1:])
    fit = est.largest_batch()
    hint = (f"use {opt('batch_size', fit)} or fewer" if fit >= 1 else
            f"not even one sample fits: use a smaller {opt('imgsz')} or another device")
    assert est.available is not None
    raise InputError(
        f"a batch of {est.batch_size} inputs of {shape} needs about {_gib(est.need)} on "
        f"{batch.device} for the forward pass ({_gib(est.per_sample)} of activations per sample, "
        f"measured), but {_gib(est.available)} is free besides the batch: {hint} (or set "
        f"{ENV_SWITCH}=0 to run anyway)"
    )
