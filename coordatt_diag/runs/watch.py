"""Watch the attention masks while a model trains: `inspect` on a fixed probe batch, probe by probe.

`Watch` finds the blocks once (on the first probe), then at each probe runs the same code path as
`inspect` (`coordatt_diag.runs.inspect.run_batches` and `finalize`: the same statistics, the same
thresholds, the same seed-block monitor entries in each block's `extra`) on the fixed probe
batches, in eval mode under `torch.no_grad`. Afterwards the model is as the training left it:
every module's train/eval flag and the random number generators (torch CPU and CUDA, Python's
`random`, NumPy's global generator) are restored, so a run with the watch draws the same random
numbers and follows the same loss curve as a run without it.

Each probe yields a `ProbeResult`: the judged `Report` (its `checkpoint.epoch` is the probe's
epoch, so the history reads like a series of checkpoints), what changed since the previous probe
(findings first seen, worse, better, resolved) and whether the run should stop (`stop_on`). The
outputs (log lines, the JSON-lines history, TensorBoard) are `WatchSink`s that render the result;
`coordatt_diag.watch.MaskWatch` wires the default ones. Under DDP (`torch.distributed` initialised,
or torchrun's `RANK`), only rank 0 probes and writes; the other ranks do nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from coordatt_diag.capture.engine import BlockSpec
from coordatt_diag.errors import UsageError
from coordatt_diag.health.thresholds import ThresholdConfig, load_thresholds
from coordatt_diag.results import CheckpointInfo, Finding, InputsInfo, Report
from coordatt_diag.runs import distributed
from coordatt_diag.runs.forward import _model_device, model_dtype
from coordatt_diag.runs.inspect import finalize, find_blocks, run_batches

#: Probe inputs: one batch, several batches, or an image folder / image / .pt / .npy file.
Probe = torch.Tensor | Sequence[torch.Tensor] | str | Path

STOP_LEVELS = ("warn", "fail")
_ORDER = {"ok": 0, "info": 0, "warn": 1, "fail": 2}
#: Samples taken from a probe file or folder by default: a probe costs a small share of an epoch.
DEFAULT_PROBE_SAMPLES = 32
#: Default time budget of a watch: its probes take at most this share of the training's time.
DEFAULT_BUDGET = 0.01

FindingKey = tuple[str, str, str | None]


def finding_key(f: Finding) -> FindingKey:
    """What identifies a finding from one probe to the next: its code, block and mask."""
    return (f.code, f.block, f.mask)


@dataclass(frozen=True)
class ProbeTime:
    """When a probe ran: the epoch and / or optimiser step the training loop passed, and the
    probe's number (from 0)."""

    probe: int
    epoch: int | None = None
    step: int | None = None

    @property
    def label(self) -> str:
        """"epoch 7", "step 300" or "probe 2"."""
        if self.epoch is not None:
            return f"epoch {self.epoch}"
        if self.step is not None:
            return f"step {self.step}"
        return f"probe {self.probe}"


@dataclass(frozen=True)
class FindingChange:
    """A finding that changed since the previous probe.

    Attributes:
        change: "new" (first seen, or seen again after it was resolved), "worse" / "better" (its
            severity changed), "resolved" (gone).
        finding: the finding now; for "resolved", as it was last seen.
        first_seen: the probe where it was first seen (in this run).
        previous: the severity at the previous probe ("worse" / "better"), else None.
    """

    change: str
    finding: Finding
    first_seen: ProbeTime
    previous: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    """One probe of a watch.

    Attributes:
        time: when it ran.
        report: the judged report, as `inspect` computes it.
        changes: findings first seen, worse, better or resolved since the previous probe.
        first_probe: this is the watch's first probe.
        stop: the report reaches `stop_on`: the training should end.
        seconds: wall time of the probe (the forward passes and the statistics).
    """

    time: ProbeTime
    report: Report
    changes: list[FindingChange] = field(default_factory=list)
    first_probe: bool = False
    stop: bool = False
    seconds: float = 0.0


class WatchSink(Protocol):
    """An output of a watch: sees every probe's result; closed when the watch is."""

    def write(self, result: ProbeResult) -> None: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch's CPU and CUDA generators, Python's `random` and NumPy's global generator."""
    import numpy as np

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py = random.getstate()
    npy = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (their forward would sync ranks)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


class Watch:
    """Probe a training model's attention masks and hand each result to the sinks.

    Args:
        model: the model being trained (a DDP wrapper is looked through); `step(model=...)` may
            name another, e.g. an EMA copy that appears later.
        probe: the fixed probe inputs: a batch (N, C, H, W), a list of batches, or a path (image
            folder or file, .pt / .npy tensors) read once, at the first probe.
        every: probe on every `every`-th call of `step` (the first call probes).
        blocks: `--blocks` regular expression.
        config: thresholds: a `--config` file, a `ThresholdConfig`, or None for what `inspect`
            uses without `--config` (a config file found in the working directory, else defaults).
        stop_on: "fail" or "warn": a probe whose report reaches this status asks the training to
            stop (`ProbeResult.stop`, `should_stop`); None never stops.
        sinks: the outputs.
        imgsz, normalize, samples: for a probe path: the input side (default as `inspect`
            decides for the model), the normalisation, and how many samples to take.
        device: where to probe (default: where the model's parameters are at each probe).
        budget: the largest share of the training's wall time the probes may take (default 1 %):
            a call of `step` whose probe would take the watch's own time above this share of
            the time since the watch was made is skipped (`skipped` counts them). The first
            probe always runs; None probes on every `every`-th call whatever it costs.
    """

    def __init__(
        self,
        model: nn.Module | None,
        probe: Probe,
        *,
        every: int = 1,
        blocks: str | None = None,
        config: Path | str | ThresholdConfig | None = None,
        stop_on: str | None = None,
        sinks: Sequence[WatchSink] = (),
        imgsz: int | None = None,
        normalize: str = "unit",
        samples: int = DEFAULT_PROBE_SAMPLES,
        device: torch.device | str | None = None,
        budget: float | None = DEFAULT_BUDGET,
    ) -> None:
        if budget is not None and not (0 < budget <= 1):
            raise UsageError(f"budget must be a share in (0, 1] or None, not {budget!r}")
        if every < 1:
            raise UsageError("every must be at least 1")
        if stop_on is not None and stop_on not in STOP_LEVELS:
            raise UsageError(f"stop_on must be one of {', '.join(STOP_LEVELS)} or None, not {stop_on!r}")
        if samples < 1:
            raise UsageError("samples must be at least 1")
        self.model = unwrap(model) if model is not None else None
        self.every = every
        self.blocks_pattern = blocks
        self.thresholds = (config if isinstance(config, ThresholdConfig)
                           else load_thresholds(Path(config) if config is not None else None))
        self.stop_on = stop_on
        self.sinks = list(sinks)
        self.device = device
        self._probe = probe
        self._imgsz, self._normalize, self._samples = imgsz, normalize, samples
        self._batches: list[torch.Tensor] | None = None
        self._inputs: InputsInfo | None = None
        self._specs: dict[int, list[BlockSpec]] = {}  # id(model) -> its blocks, found once
        self._calls = 0
        self._open: dict[FindingKey, tuple[Finding, ProbeTime]] = {}
        #: Every finding seen in this run -> the probe where it was first seen (kept when resolved).
        self.first_seen: dict[FindingKey, ProbeTime] = {}
        self.probes = 0
        #: A probe reached `stop_on`.
        self.should_stop = False
        #: The latest probe's result.
        self.last: ProbeResult | None = None
        self.closed = False
        self.budget = budget
        #: Calls of `step` skipped to keep the probes within `budget`.
        self.skipped = 0
        self._clock = time.perf_counter
        self._started = self._clock()
        self._spent = 0.0  # wall time of every probe so far
        self._last_cost: float | None = None

    # -- the training loop's side ---------------------------------------------------------------

    def step(self, epoch: int | None = None, *, step: int | None = None,
             model: nn.Module | None = None) -> ProbeResult | None:
        """Probe now if it is this call's turn (`every`) and this process is rank 0.

        Args:
            epoch: the epoch just finished (what the history, log lines and plots show).
            step: the optimiser step, if the loop counts them.
            model: probe this model (e.g. the EMA copy) instead of the one given at construction.

        Returns:
            The probe's result, or None when this call does not probe.
        """
        call = self._calls
        self._calls += 1
        if self.closed or call % self.every or not distributed.is_writer():
            return None
        target = unwrap(model) if model is not None else self.model
        if target is None:
            raise UsageError("the watch has no model: pass one to MaskWatch or to step(model=...)")
        if self._over_budget():
            self.skipped += 1
            return None
        when = ProbeTime(probe=self.probes, epoch=epoch, step=step)
        t0 = self._clock()
        report = self.probe(target, when)
        seconds = self._clock() - t0
        self._spent += seconds
        self._last_cost = seconds
        changes = self._changes(report, when)
        stop = self.stop_on is not None and _ORDER[report.summary.status] >= _ORDER[self.stop_on]
        result = ProbeResult(time=when, report=report, changes=changes,
                             first_probe=self.probes == 0, stop=stop, seconds=seconds)
        self.probes += 1
        self.should_stop = self.should_stop or stop
        self.last = result
        for sink in self.sinks:
            sink.write(result)
        return result

    def _over_budget(self) -> bool:
        """Whether one more probe (costing what the last one did) would take the watch's time
        above `budget` of the training's time since the watch was made."""
        if self.budget is None or self._last_cost is None:
            return False
        training = self._clock() - self._started - self._spent
        return self._spent + self._last_cost > self.budget * training

    def close(self) -> None:
        """Close the sinks (flush the history and TensorBoard files); later steps do nothing."""
        if self.closed:
            return
        self.closed = True
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one probe -------------------------------------------------------------------------------

    def probe(self, model: nn.Module, when: ProbeTime | None = None) -> Report:
        """Run the probe batches through `model` as `inspect` does and return the judged report;
        the model's flags and the random generators are as they were."""
        model = unwrap(model)
        with preserved_rng():
            batches = self._probe_batches(model)
            dev = torch.device(self.device) if self.device is not None else _model_device(model)
            dtype = model_dtype(model)
            specs = self._specs.get(id(model))
            if specs is None:
                first = batches[0].to(dev, dtype=dtype) if batches[0].is_floating_point() else \
                    batches[0].to(dev)
                sample = first[:2] if first.shape[0] >= 2 else first.repeat(
                    2, *([1] * (first.dim() - 1)))
                specs = find_blocks(model, sample, self.blocks_pattern, inference=False)
                self._specs[id(model)] = specs
            state = run_batches(model, batches, device=dev, dtype=dtype, blocks=specs,
                                inference=False, shard=False)
            when = when or ProbeTime(probe=self.probes)
            checkpoint = CheckpointInfo(
                path=None, sha256=None, format="in-memory", epoch=when.epoch,
                extra={"watch": {"probe": when.probe, "step": when.step, "label": when.label}})
            assert self._inputs is not None
            return finalize(model, state, self.thresholds, checkpoint, self._inputs)

    def _probe_batches(self, model: nn.Module) -> list[torch.Tensor]:
        if self._batches is not None:
            return self._batches
        probe = self._probe
        if isinstance(probe, (str, Path)):
            batches, info = _read_probe(Path(probe), model, self._imgsz, self._normalize,
                                        self._samples)
        else:
            batches = [probe] if isinstance(probe, torch.Tensor) else list(probe)
            if not batches or not all(isinstance(b, torch.Tensor) for b in batches):
                raise UsageError("probe must be a tensor, a list of tensors, or a path")
            batches = [b.detach() for b in batches]
            info = InputsInfo(source="tensors", path=None,
                              samples=sum(int(b.shape[0]) for b in batches), batches=len(batches),
                              batch_size=int(batches[0].shape[0]),
                              shape=[int(s) for s in batches[0].shape[1:]])
        self._batches, self._inputs = batches, info
        return batches

    # -- what changed ----------------------------------------------------------------------------

    def _changes(self, report: Report, when: ProbeTime) -> list[FindingChange]:
        now = {finding_key(f): f for b in report.blocks for f in b.findings}
        now.update({finding_key(f): f for f in report.findings})
        out: list[FindingChange] = []
        for key, f in now.items():
            seen = self._open.get(key)
            if seen is None:
                first = self.first_seen.setdefault(key, when)
                out.append(FindingChange("new", f, first))
                self._open[key] = (f, first)
                continue
            old, first = seen
            if old.severity != f.severity:
                worse = _ORDER[f.severity] > _ORDER[old.severity]
                out.append(FindingChange("worse" if worse else "better", f, first, old.severity))
            self._open[key] = (f, first)
        for key in [k for k in self._open if k not in now]:
            old, first = self._open.pop(key)
            out.append(FindingChange("resolved", old, first))
        return out


def _read_probe(path: Path, model: nn.Module, imgsz: int | None, normalize: str,
                samples: int) -> tuple[list[torch.Tensor], InputsInfo]:
    """The first `samples` inputs of an image folder / file or a tensors file, as `inspect`
    reads them (a YOLO model's letterboxed stride-sized images), kept in memory."""
    from coordatt_diag.load.inputs import input_channels, open_inputs

    if not path.exists():
        raise UsageError(f"probe {path} does not exist")
    tensors = path.is_file() and path.suffix.lower() in (".pt", ".pth", ".npy")
    batch_size = min(samples, 16)
    stream = open_inputs(images=None if tensors else path, tensors=path if tensors else None,
                         channels=input_channels(model), imgsz=imgsz, normalize=normalize,
                         batch_size=batch_size, batches=math.ceil(samples / batch_size),
                         model=model)
    batches: list[torch.Tensor] = []
    taken = 0
    for b in stream.batches():
        b = b[:samples - taken]
        batches.append(b.detach().cpu())
        taken += int(b.shape[0])
        if taken >= samples:
            break
    info = stream.info()
    return batches, dataclasses.replace(info, samples=taken, batches=len(batches))
