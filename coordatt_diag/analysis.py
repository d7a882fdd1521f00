"""Run a model on sample batches and build its mask-health report: the library behind `inspect`.

collect (`capture.MaskCapture` hands each block's masks to `stats` accumulators, batch by batch),
aggregate (`finalize` freezes them into `results.Report`), judge (`health`). Renderers live in
`coordatt_diag.reports`.

Example:
    >>> from coordatt_diag import analyze_model
    >>> report = analyze_model(model, [torch.randn(8, 3, 224, 224)])
    >>> [(b.name, b.status) for b in report.blocks]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coordatt_diag import __version__
from coordatt_diag.capture import BlockCall, BlockSpec, MaskCapture, discover_blocks
from coordatt_diag.errors import InputError, NoBlocksError, UsageError
from coordatt_diag.health import judge_block, summarize
from coordatt_diag.results import (
    SCHEMA_ID,
    BlockReport,
    CheckpointInfo,
    InputsInfo,
    Report,
)
from coordatt_diag.stats import BlockAccumulator, sample_moments
from coordatt_diag.thresholds import ThresholdConfig

Progress = Callable[[int], None]
#: Called once per block at the end of a run with the block's module; returns extra statistics.
ExtraProbe = Callable[[nn.Module], dict[str, Any]]


@dataclass
class RunState:
    """The accumulators of a run in progress (mergeable across runs and processes)."""

    blocks: list[BlockSpec]
    acc: dict[str, BlockAccumulator] = field(default_factory=dict)

    def on_enter(self, spec: BlockSpec, x: torch.Tensor) -> torch.Tensor:
        """The input's moments for the std ratio, taken before the block can change x."""
        return sample_moments(x)

    def on_block(self, call: BlockCall) -> None:
        self.acc.setdefault(call.spec.name, BlockAccumulator.empty()).update(
            call.x, call.out, call.masks, x_moments=call.entered)

    def capture(self, model: nn.Module, **kwargs: Any) -> MaskCapture:
        """A `MaskCapture` that feeds this run's accumulators."""
        return MaskCapture(model, self.blocks, self.on_block, on_enter=self.on_enter, **kwargs)


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


def _compile_pattern(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--blocks {pattern!r} is not a valid regular expression: {exc}") from exc
    return pattern


def _forward(model: nn.Module, batch: torch.Tensor) -> Any:
    try:
        return model(batch)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["RuntimeError"])[0][:240]
        raise InputError(
            f"the model's forward pass failed on a batch of shape {tuple(batch.shape)}: {first}; "
            "check --imgsz, the channel count and the input tensors"
        ) from exc


def find_blocks(model: nn.Module, sample: torch.Tensor, pattern: str | None = None) -> list[BlockSpec]:
    """Discover the attention blocks with one traced forward pass (see `capture`).

    Raises:
        NoBlocksError: nothing found; the message says what was searched and how to use --blocks.
    """
    pattern = _compile_pattern(pattern)
    with preserved_mode(model), torch.inference_mode():
        try:
            specs = discover_blocks(model, sample, pattern)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or ["RuntimeError"])[0][:240]
            raise InputError(
                f"the model's forward pass failed on a batch of shape {tuple(sample.shape)}: "
                f"{first}; check --imgsz, the channel count and the input tensors"
            ) from exc
    if not specs:
        n = sum(1 for _ in model.modules())
        where = f" among modules matching --blocks {pattern!r}" if pattern else ""
        raise NoBlocksError(
            f"no attention block found{where}: searched {n} modules for gates (sigmoid, hard "
            "sigmoid, relu6(x+3)/6) whose output multiplies the module's input; name the "
            "attention modules with --blocks REGEX if they compute masks another way"
        )
    return specs


def _weight_rms(module: nn.Module) -> float | None:
    total, count = 0.0, 0
    for p in module.parameters():
        if p.dim() > 1:
            total += float(p.detach().double().pow(2).sum())
            count += p.numel()
    return math.sqrt(total / count) if count else None


def finalize(
    model: nn.Module,
    state: RunState,
    thresholds: ThresholdConfig,
    checkpoint: CheckpointInfo,
    inputs: InputsInfo,
    probes: list[ExtraProbe] | None = None,
) -> Report:
    """Freeze the accumulators into a judged `Report`."""
    modules = dict(model.named_modules(remove_duplicate=False))
    blocks: list[BlockReport] = []
    for spec in state.blocks:
        acc = state.acc.get(spec.name)
        module = modules[spec.name]
        extra: dict[str, Any] = {}
        for probe in probes or []:
            extra.update(probe(module))
        block = BlockReport(
            name=spec.name,
            type=spec.type,
            kind=spec.kind,
            feature=list(spec.feature),
            masks={k: a.finalize() for k, a in acc.masks.items()} if acc else {},
            std_ratio=acc.ratio.finalize() if acc else None,
            params=sum(p.numel() for p in module.parameters()),
            identity_path=spec.identity_path,
            weight_rms=_weight_rms(module),
            extra=extra,
        )
        blocks.append(judge_block(block, thresholds.for_block(spec.name)))
    return Report(
        schema=SCHEMA_ID,
        tool={"name": "coordatt-diag", "version": __version__, "torch": torch.__version__},
        checkpoint=checkpoint,
        inputs=inputs,
        blocks=blocks,
        summary=summarize(blocks),
        thresholds=thresholds.to_dict(),
    )


def run_batches(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    blocks_pattern: str | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> RunState:
    """Discover the blocks on the first batch, then stream every batch's mask statistics.

    Args:
        model: the model (its train/eval flags are restored afterwards).
        batches: input batches (N, C, H, W).
        blocks_pattern: `--blocks` regular expression.
        device: where to run (default: where the model's parameters are).
        progress: called with the number of batches done after each batch.

    Returns:
        The run's accumulators.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise InputError("no input batch to run")
    first = first.to(dev)
    # two samples: a gate computed from a parameter has batch size 1 and must not pass for a mask
    probe = first[:2] if first.shape[0] >= 2 else first.repeat(2, *([1] * (first.dim() - 1)))
    specs = find_blocks(model, probe, blocks_pattern)
    state = RunState(blocks=specs)
    with torch.inference_mode(), state.capture(model):
        done = 0
        batch: torch.Tensor | None = first
        while batch is not None:
            _forward(model, batch)
            done += 1
            if progress is not None:
                progress(done)
            nxt = next(it, None)
            batch = nxt.to(dev, non_blocking=True) if nxt is not None else None
    return state


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def analyze_model(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    blocks_pattern: str | None = None,
    thresholds: ThresholdConfig | None = None,
    device: torch.device | str | None = None,
    checkpoint: CheckpointInfo | None = None,
    inputs: InputsInfo | None = None,
    progress: Progress | None = None,
    probes: list[ExtraProbe] | None = None,
) -> Report:
    """Find the attention blocks of `model`, stream their mask statistics over `batches`, judge.

    Args:
        model: any `nn.Module`; it is run under `torch.inference_mode`, never trained, and its
            train/eval flags are the same afterwards.
        batches: input batches (N, C, H, W), e.g. `[torch.randn(8, 3, 224, 224)]`.
        blocks_pattern: only blocks whose name matches this regex; a matching module that the
            search missed is watched too.
        thresholds: health thresholds (default: the documented table).
        device: where to run (default: where the model is).
        checkpoint: the checkpoint facts to put in the report (default: "in-memory").
        inputs: the input facts (default: counted from `batches`).
        progress: called with the number of batches done.
        probes: functions adding family-specific statistics per block.

    Returns:
        The judged report.
    """
    counted = _Counted(batches)
    state = run_batches(model, counted, blocks_pattern=blocks_pattern, device=device,
                        progress=progress)
    if inputs is None:
        inputs = InputsInfo(source="tensors", path=None, samples=counted.samples,
                            batches=counted.batches, batch_size=counted.batch_size,
                            shape=counted.shape)
    return finalize(model, state, thresholds or ThresholdConfig(),
                    checkpoint or CheckpointInfo(path=None, sha256=None, format="in-memory"),
                    inputs, probes)


class _Counted:
    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self._batches = batches
        self.samples = self.batches = self.batch_size = 0
        self.shape: list[int] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        for b in self._batches:
            if not self.shape:
                self.shape = [int(s) for s in b.shape[1:]]
                self.batch_size = int(b.shape[0])
            self.samples += int(b.shape[0])
            self.batches += 1
            yield b


@dataclass(frozen=True)
class InspectOptions:
    """Everything `inspect` needs besides the checkpoint path (the CLI options)."""

    trust: bool = False
    model: str | None = None
    model_args: str | None = None
    imports: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()
    images: Path | None = None
    tensors: Path | None = None
    imgsz: int = 224
    normalize: str = "unit"
    batch_size: int = 8
    batches: int | None = None
    seed: int = 0
    blocks: str | None = None
    config: Path | None = None
    device: str | None = None


def inspect_checkpoint(
    path: Path,
    options: InspectOptions | None = None,
    progress: Progress | None = None,
) -> Report:
    """Load the checkpoint at `path`, run the inputs the options name, and return the report."""
    from coordatt_diag.checkpoint import add_import_paths, load_model
    from coordatt_diag.inputs import input_channels, open_inputs
    from coordatt_diag.thresholds import load_thresholds

    opts = options or InspectOptions()
    thresholds = load_thresholds(opts.config)
    _compile_pattern(opts.blocks)
    add_import_paths(list(opts.paths), list(opts.imports))
    loaded = load_model(path, trust=opts.trust, factory=opts.model, factory_args=opts.model_args)
    stream = open_inputs(
        images=opts.images, tensors=opts.tensors, channels=input_channels(loaded.model),
        imgsz=opts.imgsz, normalize=opts.normalize, batch_size=opts.batch_size,
        batches=opts.batches, seed=opts.seed,
    )
    state = run_batches(loaded.model, stream.batches(), blocks_pattern=opts.blocks,
                        device=opts.device or "cpu", progress=progress)
    return finalize(loaded.model, state, thresholds, loaded.info, stream.info())
