"""Mask effect: how much the model output changes when a block's masks are replaced.

Statistics say whether a mask *varies*; this says whether it *matters* (issue 8, part 2). For each
block, every batch is run again with the block's masks replaced, one block at a time:

* **positional mean**: each mask by its mean over its own positions (H for a_h, W for a_w, H*W
  for a_hw and spatial), for each sample and channel: the block keeps its per-channel, per-sample
  scaling but loses all positional information. Channel masks have no positions, so a block made
  only of them (SE) has no positional measurement.
* **constant**: each mask by its overall mean over the batch (all samples, channels and
  positions): the block is reduced to a constant scale.

The replacement happens at the gate output, before any alpha / beta blending or clamping the block
applies (`capture.Replace`). The change is reported as the relative L2 distance of the outputs,
``sqrt(sum ||out' - out||^2 / sum ||out||^2)`` over all samples (every tensor of a tuple/dict
output); for a classifier (a 2-D output) also the share of samples whose top-1 class is unchanged,
and the accuracy drop when labels are given.

Cost: one plain forward per batch, plus one forward per block and replacement (two per block).
Under torchrun the batches are shared out as in the statistics pass (batch i on rank i mod N,
`coordatt_diag.runs.distributed`); every batch is ablated whole, so the per-block sums of the ranks
add up to those of one process and every rank gets the same effect.

Example:
    >>> specs = find_blocks(model, x[:2])
    >>> effects = measure_effect(model, specs, [x], labels=y)
    >>> effects["stage1.att"].constant.rel_l2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from coordatt_diag.capture.engine import BlockCall, BlockSpec, MaskCapture
from coordatt_diag.errors import InputError, opt
from coordatt_diag.load.inputs import read_array_file
from coordatt_diag.results import Ablation, InputsInfo, MaskEffect, PathArg

if TYPE_CHECKING:
    from coordatt_diag.runs.distributed import Group

#: The replacements, in report order.
MODES = ("positional", "constant")

Progress = Callable[[int], None]


def load_labels(path: PathArg) -> torch.Tensor:
    """Class indices from a .pt (tensor) or .npy file, as int64 (N,).

    Raises:
        InputError: the file is missing or unreadable, or does not hold a 1-D array of
            non-negative integers.
    """
    path = Path(path)
    obj = read_array_file(path, opt("labels"), "a 1-D tensor of class indices")
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, int) for v in obj):
        obj = torch.tensor(obj)
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{opt('labels', path)} holds a {type(obj).__name__}; expected a 1-D tensor "
                         "of class indices")
    from coordatt_diag.load.inputs import check_plain_tensor

    check_plain_tensor(obj, f"--labels {path}")
    if obj.dim() != 1 or obj.numel() == 0:
        raise InputError(f"{opt('labels', path)} holds a tensor of shape {tuple(obj.shape)}; expected "
                         "(N,) class indices, one per input sample")
    if obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool:
        raise InputError(f"{opt('labels', path)} holds {str(obj.dtype).replace('torch.', '')} values; "
                         "expected integer class indices")
    if int(obj.min()) < 0:
        raise InputError(f"{opt('labels', path)} holds negative values; expected class indices >= 0")
    return obj.to(torch.int64)


def check_labels(labels: torch.Tensor, samples: int, skipped: int = 0, limited: bool = False,
                 where: str | None = None) -> torch.Tensor:
    """The labels of the `samples` inputs that were run, or an error when they cannot line up.

    Args:
        labels: all labels, in input order.
        samples: number of samples run.
        skipped: images that could not be read (their labels can no longer be matched).
        limited: the inputs were cut short (`--batches`), so more labels than samples is fine.
        where: how to name the labels in messages (default: the `labels` setting).
    """
    where = where or opt("labels")
    if skipped:
        raise InputError(f"{skipped} input images could not be read, so {where} no longer lines "
                         f"up with the inputs; remove the unreadable files or drop {opt('labels')}")
    n = int(labels.numel())
    if n < samples or (n > samples and not limited):
        raise InputError(f"{where} has {n} labels but the inputs have {samples} samples; give one "
                         "label per sample, in input order")
    return labels[:samples]


@dataclass
class _Tally:
    """Running sums for one block and one replacement."""

    diff_sq: float = 0.0
    base_sq: float = 0.0
    agree: int = 0
    correct: int = 0
    batches: int = 0

    def ablation(self, samples: int, classified: int, labelled: int,
                 base_correct: int) -> Ablation:
        rel = math.sqrt(self.diff_sq / self.base_sq) if self.base_sq > 0 else (
            0.0 if self.diff_sq == 0 else math.inf)
        return Ablation(
            rel_l2=rel,
            top1_agreement=self.agree / classified if classified else None,
            accuracy_drop=(base_correct - self.correct) / labelled if labelled else None,
        )

    def merge(self, other: _Tally) -> None:
        self.diff_sq += other.diff_sq
        self.base_sq += other.base_sq
        self.agree += other.agree
        self.correct += other.correct
        self.batches += other.batches


@dataclass
class _Sums:
    """Everything the effect pass adds up over its batches; two shards' sums merge by adding."""

    tallies: dict[tuple[str, str], _Tally]
    failed: set[str] = field(default_factory=set)  # blocks whose masks were not all replaced
    unsupported: set[str] = field(default_factory=set)  # positional layout unknown
    samples: int = 0
    classified: int = 0
    labelled: int = 0
    base_correct: int = 0

    def merge(self, other: _Sums) -> None:
        for key, tally in other.tallies.items():
            self.tallies[key].merge(tally)
        self.failed |= other.failed
        self.unsupported |= other.unsupported
        self.samples += other.samples
        self.classified += other.classified
        self.labelled += other.labelled
        self.base_correct += other.base_correct


@dataclass
class _BlockRun:
    """Replacement state of one block while its ablated forwards run."""

    spec: BlockSpec
    kinds: dict[int, str]  # gate ordinal -> mask kind
    positional: bool  # whether the positional replacement applies (some mask has positions)
    mode: str = "constant"
    replaced: set[int] = field(default_factory=set)
    unsupported: bool = False  # a positional mask in a layout whose positions are unknown

    def replace(self, block: str, ordinal: int, gate: torch.Tensor) -> torch.Tensor | None:
        kind = self.kinds.get(ordinal)
        if block != self.spec.name or kind is None:
            return None
        self.replaced.add(ordinal)
        if self.mode == "constant":
            return gate.mean().expand_as(gate).contiguous()
        dims = _position_dims(gate, kind, self.spec.feature[0] if self.spec.feature else -1)
        if dims is None:
            self.unsupported = True
            return None
        if not dims:
            return None
        return gate.mean(dim=dims, keepdim=True).expand_as(gate).contiguous()


def _position_dims(gate: torch.Tensor, kind: str, channels: int) -> tuple[int, ...] | None:
    """The dims of a gate output that are positions: () for a channel mask, None if unknown."""
    base = kind.split("#")[0]
    if base == "channel":
        return ()
    if gate.dim() < 2:
        return None
    if base == "spatial":
        return tuple(range(1, gate.dim()))
    if gate.dim() >= 3 and gate.shape[1] == channels:
        return tuple(range(2, gate.dim()))
    return None


def _output_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _output_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _output_tensors(v)]
    return []


def _logits(obj: Any) -> torch.Tensor | None:
    return obj if isinstance(obj, torch.Tensor) and obj.dim() == 2 else None


def measure_effect(
    model: nn.Module,
    specs: list[BlockSpec],
    batches: Iterable[torch.Tensor],
    *,
    labels: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> dict[str, MaskEffect | None]:
    """Measure each block's mask effect over `batches` (see the module docstring).

    Args:
        model: the model; it runs in eval mode under `torch.inference_mode` and its train/eval
            flags and hooks are as before afterwards.
        specs: the blocks (from `analysis.find_blocks` / `capture.discover_blocks`).
        batches: input batches (N, C, H, W), iterated once.
        labels: class indices (N_total,) in batch order, for the accuracy drop; needs a 2-D output.
        device: where to run (default: where the model's parameters are).
        progress: called with the number of batches done after each batch.

    Returns:
        Block name -> its effect; None for a block whose masks could not be replaced (a block
        named by `--blocks` that the search did not select, or whose masks were not seen).

    Raises:
        InputError: the labels do not fit the batches or the model output, or there is no batch.
    """
    from coordatt_diag.runs import distributed
    from coordatt_diag.runs.forward import _model_device

    dev = torch.device(device) if device is not None else _model_device(model)
    runs: dict[str, _BlockRun] = {}
    for spec in specs:
        if not spec.mask_gates or len(spec.mask_gates) != len(spec.masks):
            continue
        kinds = dict(zip(spec.mask_gates, spec.masks, strict=True))
        positional = any(k.split("#")[0] != "channel" for k in spec.masks)
        runs[spec.name] = _BlockRun(spec, kinds, positional)
    sums = _Sums(tallies={(name, mode): _Tally() for name in runs for mode in MODES})
    # under torchrun each rank runs its share of the batches (as `analysis.run_batches` does)
    # and the sums are merged; an error on one rank travels in the same collective
    shard = distributed.group(dev)
    error: tuple[str, str, int] | None = None
    try:
        _run_batches(model, runs, sums, batches, labels, dev, shard, progress)
    except Exception as exc:
        if shard is None:
            raise
        error = distributed.error_payload(exc)
    if shard is not None:
        gathered = distributed.all_gather((None if error is not None else sums, error))
        distributed.raise_first_error([err for _, err in gathered])
        sums = gathered[0][0]
        for other, _ in gathered[1:]:
            sums.merge(other)
    samples, classified, labelled, base_correct = (sums.samples, sums.classified, sums.labelled,
                                                   sums.base_correct)
    tallies, failed = sums.tallies, sums.failed
    if samples == 0:
        raise InputError("no input batch to run")
    effects: dict[str, MaskEffect | None] = {}
    for spec in specs:
        measured = runs.get(spec.name)
        if measured is None or spec.name in failed:
            effects[spec.name] = None
            continue
        pos = None
        if measured.positional and spec.name not in sums.unsupported:
            pos = tallies[(spec.name, "positional")].ablation(samples, classified, labelled,
                                                               base_correct)
        effects[spec.name] = MaskEffect(
            positional=pos,
            constant=tallies[(spec.name, "constant")].ablation(samples, classified, labelled,
                                                                base_correct),
            accuracy=base_correct / labelled if labelled else None,
            samples=samples,
        )
    return effects


def _run_batches(model: nn.Module, runs: dict[str, _BlockRun], sums: _Sums,
                 batches: Iterable[torch.Tensor], labels: torch.Tensor | None, dev: torch.device,
                 shard: Group | None, progress: Progress | None) -> None:
    """Add this process's batches (all of them, or its shard under torchrun) to `sums`."""
    from coordatt_diag.runs.forward import _forward, preserved_mode

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    tallies = sums.tallies
    offset = 0
    done = 0
    with preserved_mode(model), torch.inference_mode():
        for index, batch in enumerate(batches):
            n = int(batch.shape[0])
            start, offset = offset, offset + n  # labels line up with every batch, run or not
            if shard is not None and not shard.owns(index):
                continue
            batch = batch.to(dev, dtype=dtype) if dtype is not None and batch.is_floating_point() \
                else batch.to(dev)
            base = _forward(model, batch)
            base_parts = _output_tensors(base)
            logits = _logits(base)
            y = None
            if labels is not None:
                if logits is None:
                    raise InputError(f"{opt('labels')} needs a classifier (a model whose output is 2-D "
                                     f"logits); this model returns {_describe(base)}")
                if offset > labels.numel():
                    raise InputError(f"{opt('labels')} has {labels.numel()} labels but the inputs have "
                                     "more samples; give one label per sample, in input order")
                y = labels[start:offset].to(logits.device)
                if int(y.max()) >= logits.shape[1]:
                    raise InputError(f"{opt('labels')} holds class {int(y.max())} but the model has "
                                     f"{logits.shape[1]} outputs")
                sums.base_correct += int((logits.argmax(1) == y).sum())
                sums.labelled += n
            sums.samples += n
            if logits is not None:
                sums.classified += n
            base_sq = sum(float(t.double().pow(2).sum()) for t in base_parts)
            for name, run in runs.items():
                for mode in MODES:
                    if mode == "positional" and not run.positional:
                        continue
                    run.mode = mode
                    run.replaced.clear()
                    with MaskCapture(model, [run.spec], _ignore, replace=run.replace):
                        out = _forward(model, batch)
                    if run.replaced != set(run.kinds):
                        sums.failed.add(name)
                        continue
                    parts = _output_tensors(out)
                    tally = tallies[(name, mode)]
                    tally.diff_sq += sum(float((a.double() - b.double()).pow(2).sum())
                                         for a, b in zip(parts, base_parts, strict=False))
                    tally.base_sq += base_sq
                    tally.batches += 1
                    out_logits = _logits(out)
                    if logits is not None and out_logits is not None:
                        tally.agree += int((out_logits.argmax(1) == logits.argmax(1)).sum())
                        if y is not None:
                            tally.correct += int((out_logits.argmax(1) == y).sum())
                if run.unsupported:
                    sums.unsupported.add(name)
            done += 1
            if progress is not None:
                progress(done)


def _ignore(call: BlockCall) -> None:  # masks are replaced, not collected
    return None


def effect_of_inputs(
    model: nn.Module,
    specs: list[BlockSpec],
    open_stream: Callable[[], Any],
    first_run: InputsInfo,
    *,
    labels: torch.Tensor | None = None,
    limited: bool = False,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> dict[str, MaskEffect | None]:
    """`measure_effect` over a second pass of the inputs that the statistics were taken on.

    Args:
        model: the model.
        specs: the blocks found in the first pass.
        open_stream: opens the same inputs again (`inputs.open_inputs` with the same options).
        first_run: what the first pass ran, to line the labels up with.
        labels: all labels of the inputs, in input order (`load_labels`), or None.
        limited: the inputs were cut short with `--batches`.
        device: where to run.
        progress: called with the number of batches done.
    """
    if labels is not None:
        labels = check_labels(labels, first_run.samples, first_run.skipped, limited)
    stream = open_stream()
    return measure_effect(model, specs, stream.batches(), labels=labels, device=device,
                          progress=progress)


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}"
