"""Will a batch fit? Measure the activation memory of one sample, check the batch before the run.

The statistics themselves take a few numbers per mask whatever the number of batches (see
`coordatt_diag.stats.masks`): what grows with the inputs is the model's own forward pass, linearly in
the batch size. `measure_activations` runs one sample under `LiveBytes`, a dispatch mode that
follows every tensor the forward pass creates until it is freed and keeps the peak of the live
bytes (on any device, without an allocator's help); `check_batch` scales the peak to the batch
and compares it with the memory free on the device (CUDA: `mem_get_info`; CPU: MemAvailable,
bounded by the cgroup limit), so a batch that would not fit is refused before the run, with a
batch size that fits.

The mode does not load torch's compiler: `TorchDispatchMode` wraps a subclass's
`__torch_dispatch__` in `torch._disable_dynamo` unless `_should_skip_dynamo` says no, and the first
call through that wrapper imports `torch._dynamo` (over a second of import and a slower
interpreter exit); nothing here is ever compiled, so `LiveBytes` says no.
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


class LiveBytes(TorchDispatchMode):
    """Follows the storages that ops create; `peak` is the most bytes alive at once.

    A storage counts until the last tensor object on it is freed: what a plain forward pass
    holds, module inputs kept by their callers included. (Counting only to each storage's last
    read, so that the pass could be shared with the discovery tracer, which keeps the tensors it
    tags alive until their module call returns, missed a third of the peak of a YOLO-style
    model: eager Python holds a module's input for the whole call.)

    Example:
        >>> with torch.inference_mode(), LiveBytes() as live:
        ...     model(sample)
        >>> live.per_sample(sample)
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # False: __torch_dispatch__ is not wrapped in torch._disable_dynamo (see the module doc)
        return False

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

    def per_sample(self, sample: torch.Tensor) -> int:
        """The peak per sample of `sample`'s batch, rounded up."""
        return -(-self.peak // max(int(sample.shape[0]), 1))


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
    mode = LiveBytes()
    with torch.inference_mode(), mode:
        model(sample)
    return mode.per_sample(sample)


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


def estimate(model: nn.Module, probe: torch.Tensor, batch: torch.Tensor,
             per_sample: int | None = None) -> MemoryEstimate:
    """Measure `probe` (a few samples; skipped when `per_sample` was measured already, e.g.
    during discovery) and scale to `batch`'s size on the model's device."""
    if per_sample is None:
        per_sample = measure_activations(model, probe)
    b = int(batch.shape[0])
    input_bytes = batch.numel() * batch.element_size()
    need = int(MARGIN * per_sample * b)
    return MemoryEstimate(per_sample=per_sample, batch_size=b, input_bytes=input_bytes,
                          need=need, available=available_bytes(batch.device))


def bound_fits(allocated: int, samples: int, batch: torch.Tensor) -> bool:
    """Whether `batch` surely fits, judged without a measuring pass: `allocated` is every byte a
    pass over `samples` samples created (the discovery pass counts it), which no peak of that
    pass exceeds; scaled to the batch's size (never below one such pass) with `MARGIN`, it is
    compared with the free memory. False means only "not sure": `check_batch` measures then."""
    need = MARGIN * allocated * max(int(batch.shape[0]) / max(samples, 1), 1.0)
    free = available_bytes(batch.device)
    return free is None or need <= free


def enabled() -> bool:
    """Whether the pre-check runs (COORDATT_DIAG_MEMORY_CHECK is not 0)."""
    return os.environ.get(ENV_SWITCH, "1") != "0"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.0f} MiB"


def check_batch(model: nn.Module, probe: torch.Tensor, batch: torch.Tensor,
                per_sample: int | None = None) -> MemoryEstimate | None:
    """Refuse a batch that would not fit in the device's free memory, before the run starts.

    `per_sample`: the activation peak per sample if already measured (no forward pass then).
    With COORDATT_DIAG_MEMORY_CHECK=0 nothing is measured or checked (None).

    Raises:
        InputError: the batch needs more than the free memory; the message gives a batch size
            that fits.
    """
    if not enabled():
        return None
    est = estimate(model, probe, batch, per_sample)
    if est.fits:
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


def check_input_batch(batch_size: int, channels: int, side: int, what: str) -> None:
    """Refuse a float32 input batch (batch_size, channels, side, side) that could not even be
    allocated in free CPU memory (or whose size overflows int64), before it is built.

    Raises:
        InputError: the batch is too big; the message gives a batch size that fits.
    """
    per_sample = 4 * channels * side * side
    need = batch_size * per_sample
    if need >= 1 << 62:
        raise InputError(f"a {what} batch of {batch_size} x {channels}x{side}x{side} floats is "
                         f"too large to address; lower {opt('batch_size')} or {opt('imgsz')}")
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return
    free = available_bytes(torch.device("cpu"))
    if free is None or need <= free:
        return
    fit = free // max(per_sample, 1)
    hint = (f"use --batch-size {fit} or fewer" if fit >= 1 else
            "not even one sample fits: use a smaller --imgsz")
    raise InputError(f"a {what} batch of {batch_size} x {channels}x{side}x{side} floats needs "
                     f"{_gib(need)}, but {_gib(free)} of memory is free: {hint}")
