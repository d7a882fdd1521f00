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
import functools
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from coordatt_diag import __version__
from coordatt_diag.capture.engine import (
    DISCOVERY_BATCH,
    BlockCall,
    BlockSpec,
    FirstCall,
    MaskCapture,
    trace_blocks,
)
from coordatt_diag.errors import InputError, NoBlocksError, UsageError, opt
from coordatt_diag.health.rules import judge_block, summarize
from coordatt_diag.health.thresholds import ThresholdConfig
from coordatt_diag.load import memory
from coordatt_diag.load.devices import Placement, resolve_placement
from coordatt_diag.results import (
    SCHEMA_ID,
    BlockReport,
    CheckpointInfo,
    InputsInfo,
    MaskEffect,
    PathArg,
    Report,
    WeightInit,
)
from coordatt_diag.runs import distributed
from coordatt_diag.runs.forward import _forward, _forward_errors, _model_device, model_dtype, preserved_mode
from coordatt_diag.stats.masks import BlockAccumulator, MaskAccumulator, sample_moments

Progress = Callable[[int], None]
#: Called once per block at the end of a run with the block's module; returns extra statistics.
ExtraProbe = Callable[[nn.Module], dict[str, Any]]


@dataclass
class RunState:
    """The accumulators of a run in progress (mergeable across runs and processes)."""

    blocks: list[BlockSpec]
    acc: dict[str, BlockAccumulator] = field(default_factory=dict)
    #: Per-batch observers beside the mask statistics (`BlockObserver`; by default the seed
    #: blocks' monitor, `coordatt_diag.stats.monitor`): attached for the run, shown every block call,
    #: asked for each block's `extra` entries at the end, merged with their counterparts.
    observers: list[BlockObserver] = field(default_factory=lambda: _default_observers())

    #: The last block output's moments while a capture runs: (weak reference to the output, its
    #: version counter, its moments), reused when the next block's input is that very tensor,
    #: not changed in place since (same version). Inference tensors have no version counter:
    #: theirs are never reused.
    _last_out: tuple[Any, int, torch.Tensor] | None = field(default=None, repr=False,
                                                             compare=False)
    #: The std ratio moments of the samples the discovery pass ran (`seed`), per block, waiting
    #: for the rest of their batch: (input moments, values per sample, output's, output's).
    _seeded: dict[str, tuple[torch.Tensor, int, torch.Tensor, int]] = field(
        default_factory=dict, repr=False, compare=False)

    def sees_every_call(self, model: nn.Module) -> bool:
        """Whether an observer must see every block call itself, so that the samples of a
        traced pass cannot count without it (an observer that does not say: it must)."""
        return any(not hasattr(o, "watches") or o.watches(model, self.blocks)
                   for o in self.observers)

    def seed(self, first: dict[str, FirstCall]) -> None:
        """Fold the samples a traced pass ran (the first batch's first ones): their masks now;
        their std ratio moments join the rest of the batch's in `on_block` (one batch, as if
        it had run whole), or `close_seed` folds them alone."""
        for name, call in first.items():
            acc = self.acc.setdefault(name, BlockAccumulator.empty())
            for mask_name, mask in call.masks.items():
                acc.masks.setdefault(mask_name, MaskAccumulator()).update(mask)
            if call.x_moments is not None and call.out_moments is not None:
                self._seeded[name] = (call.x_moments, call.x_numel, call.out_moments,
                                      call.out_numel)

    def close_seed(self) -> None:
        """Fold the seeded moments no call of the rest of their batch joined."""
        for name, (xm, xn, om, on) in self._seeded.items():
            self.acc[name].ratio.add(xm, xn, om, on)
        self._seeded.clear()

    def on_enter(self, spec: BlockSpec, x: torch.Tensor) -> torch.Tensor:
        """The input's moments for the std ratio, taken before the block can change x."""
        last = self._last_out
        if last is not None and last[0]() is x and _version(x) == last[1]:
            return last[2]
        return sample_moments(x)

    def on_block(self, call: BlockCall) -> None:
        out, out_moments = call.out, None
        self._last_out = None
        if out is not None and out.dim() >= 2 and call.x.dim() >= 2:
            out_moments = sample_moments(out)
            version = _version(out)
            if version is not None:
                self._last_out = (weakref.ref(out), version, out_moments)
        acc = self.acc.setdefault(call.spec.name, BlockAccumulator.empty())
        seeded = self._seeded.pop(call.spec.name, None) if self._seeded else None
        if seeded is not None:
            xm, xn, om, on = seeded
            x_moments = (None if out is None or out_moments is None else call.entered
                         if call.entered is not None else sample_moments(call.x))
            if x_moments is not None and out is not None and out_moments is not None \
                    and xn == call.x[0].numel() and on == out[0].numel() \
                    and x_moments.shape[1] == out_moments.shape[1]:
                # the traced samples and these are one batch
                acc.ratio.add(torch.cat([xm, x_moments], dim=1), xn,
                              torch.cat([om, out_moments], dim=1), on)
                out = None  # its moments are folded
            else:  # not joinable: the traced samples count as a batch of their own
                acc.ratio.add(xm, xn, om, on)
        acc.update(call.x, out, call.masks, x_moments=call.entered, out_moments=out_moments)
        for observer in self.observers:
            observer.on_block(call)

    @contextlib.contextmanager
    def capture(self, model: nn.Module, **kwargs: Any) -> Iterator[MaskCapture]:
        """A `MaskCapture` that feeds this run's accumulators, with the observers attached."""
        with contextlib.ExitStack() as stack:
            for observer in self.observers:
                stack.enter_context(observer.attach(model, self.blocks))
            stack.callback(setattr, self, "_last_out", None)
            yield stack.enter_context(MaskCapture(model, self.blocks, self.on_block,
                                                  on_enter=self.on_enter, **kwargs))

    def merge(self, other: RunState) -> None:
        """Add the statistics of `other` (another shard of the same run) to this state."""
        for name, acc in other.acc.items():
            if name in self.acc:
                self.acc[name].merge(acc)
            else:
                self.acc[name] = acc
        for mine, theirs in zip(self.observers, other.observers, strict=True):
            mine.merge(theirs)


def _version(t: torch.Tensor) -> int | None:
    """The tensor's version counter (bumped by every in-place change); None for an inference
    tensor, which has none."""
    if t.is_inference():
        return None
    return int(t._version)


class BlockObserver(Protocol):
    """Sees every block call of a run and adds per-block entries to the report's `extra`.

    An observer may also have `watches(model, blocks) -> bool`: whether it streams anything of
    those blocks. One that says False lets a run count the discovery pass's samples without
    showing it their calls (`RunState.sees_every_call`); one without the method is shown every
    call (the first batch runs whole).
    """

    def attach(self, model: nn.Module,
               blocks: list[BlockSpec]) -> contextlib.AbstractContextManager[None]: ...

    def on_block(self, call: BlockCall) -> None: ...

    def merge(self, other: Any) -> None: ...

    def results(self, name: str, module: nn.Module) -> dict[str, Any]: ...


def _default_observers() -> list[BlockObserver]:
    from coordatt_diag.stats.monitor import MonitorObserver

    return [MonitorObserver()]


def _compile_pattern(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{opt('blocks', pattern)} is not a valid regular expression: {exc}") from exc
    return pattern


def _grad_off(inference: bool) -> contextlib.AbstractContextManager[Any]:
    """`torch.inference_mode` for a run on its own; `torch.no_grad` inside a training, whose
    lazily built tensors (anchor grids, caches) must stay usable by autograd afterwards."""
    return torch.inference_mode() if inference else torch.no_grad()


def find_blocks(model: nn.Module, sample: torch.Tensor, pattern: str | None = None,
                inference: bool = True) -> list[BlockSpec]:
    """Discover the attention blocks with one traced forward pass (see `capture`).

    With `inference` False the pass runs under `no_grad` instead of `inference_mode`.

    Raises:
        NoBlocksError: nothing found; the message says what was searched and how to use --blocks.
    """
    return discover(model, sample, pattern, measure=False, inference=inference).blocks


@dataclass(frozen=True)
class Discovery:
    """What the fixed costs of a run found: the blocks, what the traced pass allocated
    (`allocated` bytes over `samples` samples: the memory pre-check's upper bound) and, when
    measured, the peak activation bytes per sample (its exact figure,
    `coordatt_diag.load.memory`)."""

    blocks: list[BlockSpec]
    allocated: int
    samples: int
    per_sample: int | None = None
    #: with `discover(keep=True)`: each block's call in the traced pass, for the run's
    #: statistics (`RunState.seed`); None when the pass could not keep them
    first: dict[str, FirstCall] | None = field(default=None, repr=False, compare=False)


def _measure(model: nn.Module, sample: torch.Tensor) -> int:
    """The memory pre-check's exact figure: peak activation bytes of `sample`'s first sample."""
    with preserved_mode(model), _forward_errors(sample):
        return memory.measure_activations(model, sample[:1])


def discover(model: nn.Module, sample: torch.Tensor, pattern: str | None = None,
             measure: bool = True, inference: bool = True, keep: bool = False) -> Discovery:
    """`find_blocks` on `sample`, then (`measure`) the activation memory of one of its samples.

    With `keep`, the traced pass also keeps what the run's statistics need of its samples
    (`Discovery.first`; `trace_blocks` with the std ratio's `sample_moments`): a run whose first
    batch starts with `sample` need not run those samples again.

    The traced pass counts every byte it allocates (`Discovery.allocated`), an upper bound that
    settles the memory pre-check when the batch fits with room to spare (`run_batches`). The exact
    figure is a plain forward pass of one sample under `memory.LiveBytes`: the discovery pass
    cannot give it, as the tracer keeps the tensors it tags alive until their module call
    returns (2.4x the true peak on MobileNetV2-CoordAtt).

    Raises:
        NoBlocksError: as `find_blocks`.
    """
    pattern = _compile_pattern(pattern)
    with preserved_mode(model), _grad_off(inference), _forward_errors(sample):
        traced = trace_blocks(model, sample, pattern, sample_moments if keep else None)
    specs = traced.blocks
    if not specs:
        n = sum(1 for _ in model.modules())
        where = f" among modules matching {opt('blocks', pattern)}" if pattern else ""
        raise NoBlocksError(
            f"no attention block found{where}: searched {n} modules for gates (sigmoid, hard "
            "sigmoid, relu6(x+3)/6) whose output multiplies the module's input; name the "
            f"attention modules with {opt('blocks', 'REGEX')} if they compute masks another way"
        )
    return Discovery(blocks=specs, allocated=traced.allocated, samples=traced.samples,
                     per_sample=_measure(model, sample) if measure else None,
                     first=traced.first)


class DiscoveryCache:
    """Discoveries made in one run, for runs of several checkpoints of one architecture
    (`check`, `trend`, `compare`: `coordatt_diag.runs.multirun`): the first checkpoint is
    discovered (and its memory measured) in a traced pass, the others reuse it.

    The key is what discovery depends on besides the weights of large tensors: the model's class,
    its module tree (names and classes), the name, shape and dtype of every parameter and buffer,
    the values of the one-element ones (a learned `alpha` read as a scalar while discovering can
    decide whether a block keeps an identity path), the input's shape, dtype and device, and
    the --blocks pattern. Two checkpoints that differ in any of these are discovered apart.
    """

    def __init__(self) -> None:
        self._found: dict[tuple[Any, ...], Discovery] = {}
        self.hits = 0

    @staticmethod
    def key(model: nn.Module, sample: torch.Tensor, pattern: str | None) -> tuple[Any, ...]:
        cls = type(model)
        tree = tuple((name, type(m).__qualname__) for name, m in model.named_modules())
        tensors = tuple(
            (name, tuple(t.shape), str(t.dtype), t.detach().reshape(()).item()
             if t.numel() == 1 else None)
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        )
        return (cls.__module__, cls.__qualname__, tree, tensors, tuple(sample.shape),
                str(sample.dtype), str(sample.device), pattern)

    def discover(self, model: nn.Module, sample: torch.Tensor, pattern: str | None = None,
                 measure: bool = True) -> Discovery:
        """`discover`, or the cached discovery of an identical architecture and input."""
        key = self.key(model, sample, pattern)
        found = self._found.get(key)
        if found is not None and (found.per_sample is not None or not measure):
            self.hits += 1
            return found
        if found is not None:  # measure the one it has
            found = replace(found, per_sample=_measure(model, sample))
            self.hits += 1
        else:
            found = discover(model, sample, pattern, measure=measure)
        self._found[key] = found
        return found


def _weight_rms(module: nn.Module) -> float | None:
    total, count = 0.0, 0
    for p in module.parameters():
        if p.dim() > 1:
            total += float(p.detach().double().pow(2).sum())
            count += p.numel()
    return math.sqrt(total / count) if count else None


#: A tensor's std may differ from its init distribution's by this many standard errors of a
#: sample std (the std of a std estimate over n values is ~ k / sqrt(n): k 0.45 for a uniform
#: draw, 0.71 for a normal one) and still count as "at init"; never less than 5 %.
_INIT_SIGMAS = 4.0
_INIT_MIN_TOLERANCE = 0.05
_UNIFORM_K, _NORMAL_K = math.sqrt(0.2), math.sqrt(0.5)


def _declared_inits(module: nn.Module) -> dict[str, float]:
    """Parameter name (relative to `module`) -> std of the normal init its block declares.

    A block declares the init of weights that do not keep PyTorch's default with a
    `weight_init_std` dict attribute ({"head.weight": 0.01}), as the package's own blocks do.
    """
    out: dict[str, float] = {}
    for prefix, sub in module.named_modules():
        declared = getattr(sub, "weight_init_std", None)
        if isinstance(declared, dict):
            for name, std in declared.items():
                if isinstance(std, (int, float)) and std > 0:
                    out[f"{prefix}.{name}" if prefix else name] = float(std)
    return out


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _affine_moved(norm: nn.Module) -> bool:
    """Whether a normalisation layer's affine weight or bias left its init (exactly 1 and 0)."""
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if isinstance(weight, torch.Tensor) and bool((weight.detach() != 1).any()):
        return True
    return isinstance(bias, torch.Tensor) and bool((bias.detach() != 0).any())


def weight_init(module: nn.Module) -> WeightInit | None:
    """Whether the weight tensors (dim > 1) of `module` still look like their init.

    Each tensor is compared with the init its block declares (`weight_init_std`), else with
    PyTorch's default for convolutions and linear layers (kaiming_uniform with a = sqrt(5):
    uniform in +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)); an all-zero tensor is at a zero init. A
    tensor is at init when its values stay inside the init's range (the uniform bound, or 6 std
    for a normal init), its std is within `_INIT_SIGMAS` standard errors of the init's std and
    its layer's bias, if any, inside its own init range (+-1/sqrt(fan_in), or 0 for a declared
    init). A normalisation layer (batch, group, layer or instance norm) whose affine weight is
    not all ones or bias not all zeros counts as one more tensor that left its init.
    Weight decay shrinks the std and training pushes values past the bound, so neither a
    collapsed nor a trained tensor passes.
    """
    declared = _declared_inits(module)
    tensors = at_init = values = 0
    ratios: list[float] = []
    bound_ratios: list[float] = []
    kinds: list[str] = []
    params = dict(module.named_parameters())
    for name, p in params.items():
        if p.dim() < 2 or p.numel() < 2:
            continue
        w = p.detach().double()
        bias = params.get(name.removesuffix("weight") + "bias") if name.endswith("weight") else None
        tensors += 1
        n = w.numel()
        values += n
        peak = float(w.abs().max())
        std = float(w.std())
        if not (math.isfinite(peak) and math.isfinite(std)):
            kinds.append("uniform(1/sqrt(fan_in))")
            continue
        b_peak = 0.0 if bias is None else float(bias.detach().double().abs().max())
        if peak == 0.0:
            at_init += int(b_peak == 0.0)
            ratios.append(1.0)
            kinds.append("zeros")
            continue
        if name in declared:
            init_std, k, limit = declared[name], _NORMAL_K, 6.0 * declared[name]
            kinds.append(f"normal({declared[name]:g})")
        else:
            fan_in = w[0].numel()
            limit = 1.0 / math.sqrt(fan_in)
            init_std, k = limit / math.sqrt(3.0), _UNIFORM_K
            kinds.append("uniform(1/sqrt(fan_in))")
            bound_ratios.append(peak / limit)
        ratio = std / init_std
        ratios.append(ratio)
        tolerance = max(_INIT_MIN_TOLERANCE, _INIT_SIGMAS * k / math.sqrt(n))
        # a bias keeps PyTorch's default U(+-1/sqrt(fan_in)) or a declared block's zeros
        b_limit = 0.0 if name in declared else 1.0 / math.sqrt(w[0].numel())
        if (peak <= limit * (1 + 1e-6) and abs(ratio - 1.0) <= tolerance
                and b_peak <= b_limit * (1 + 1e-6)):
            at_init += 1
    if not tensors:
        return None
    # a normalisation layer's affine parameters start at exactly 1 and 0 and any training step
    # moves them: one that moved is a tensor that left its init (decisive where the heads' few
    # weights cannot tell a short training from none)
    for sub in module.modules():
        if isinstance(sub, _NORMS) and _affine_moved(sub):
            tensors += 1
    ratios.sort()
    return WeightInit(
        tensors=tensors, at_init=at_init, values=values,
        std_ratio=ratios[len(ratios) // 2] if ratios else None,
        max_bound_ratio=max(bound_ratios) if bound_ratios else None,
        init="+".join(dict.fromkeys(kinds)),
    )


def _scalar_attr(module: nn.Module, name: str) -> float | None:
    v = getattr(module, name, None)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach())
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def scale_floor(module: nn.Module) -> float | None:
    """The smallest scale of its input a block with the package's blend can output.

    The blend `scale = (1 - alpha) + alpha * att` with `att = 1 + beta * (a - 1)` (attention
    residual, beta 1 without one), per axis with `alpha_h` / `alpha_w`, reaches its least value
    where every mask is 0: 1 - alpha * beta, or 1 + beta * ((1 - alpha_h)(1 - alpha_w) - 1).
    None for a block without an `alpha` (its blend is unknown).
    """
    beta = _scalar_attr(module, "beta")
    b = 1.0 if beta is None else beta
    alpha = _scalar_attr(module, "alpha")
    if alpha is not None:
        return max(0.0, 1.0 - alpha * b)
    ah, aw = _scalar_attr(module, "alpha_h"), _scalar_attr(module, "alpha_w")
    if ah is not None and aw is not None:
        return max(0.0, 1.0 + b * ((1.0 - ah) * (1.0 - aw) - 1.0))
    return None


def finalize(
    model: nn.Module,
    state: RunState,
    thresholds: ThresholdConfig,
    checkpoint: CheckpointInfo,
    inputs: InputsInfo,
    probes: list[ExtraProbe] | None = None,
    effects: dict[str, MaskEffect | None] | None = None,
) -> Report:
    """Freeze the accumulators (and the mask effect per block, if measured) into a judged
    `Report`."""
    modules = dict(model.named_modules(remove_duplicate=False))
    blocks: list[BlockReport] = []
    for spec in state.blocks:
        acc = state.acc.get(spec.name)
        module = modules[spec.name]
        extra: dict[str, Any] = {}
        for probe in probes or []:
            extra.update(probe(module))
        for observer in state.observers:
            extra.update(observer.results(spec.name, module))
        if spec.forced:
            extra["forced"] = True  # named by --blocks, not selected by the search
        parts = {m: p for m, p in zip(spec.masks, spec.parts, strict=False) if p}
        if parts:
            extra["parts"] = parts  # mask -> the child of the block it comes from
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
            effect=(effects or {}).get(spec.name),
            weight_init=weight_init(module),
            scale_floor=scale_floor(module),
        )
        blocks.append(judge_block(block, thresholds.for_block(spec.name)))
    return Report(
        schema=SCHEMA_ID,
        tool={"name": "coordatt-diag", "version": __version__, "torch": torch.__version__,
              "device": str(_model_device(model)), "dtype": str(model_dtype(model)).removeprefix(
                  "torch."), "processes": distributed.launched_world()},
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
    dtype: torch.dtype | None = None,
    discoveries: DiscoveryCache | None = None,
    blocks: list[BlockSpec] | None = None,
    inference: bool = True,
    shard: bool = True,
) -> RunState:
    """Discover the blocks on the first batch, then stream every batch's mask statistics.

    Args:
        model: the model (its train/eval flags are restored afterwards).
        batches: input batches (N, C, H, W).
        blocks_pattern: `--blocks` regular expression.
        device: where to run (default: where the model's parameters are).
        progress: called with the number of batches done after each batch.
        dtype: the dtype floating inputs are cast to (default: the model's).
        discoveries: discoveries of earlier models of this run (see `DiscoveryCache`).
        blocks: blocks found already (`find_blocks`): no discovery and no memory pre-check (a
            watch during training, `coordatt_diag.runs.watch`).
        inference: run under `torch.inference_mode` (False: `torch.no_grad`, for a model that
            goes on training).
        shard: under torchrun, share the batches among the ranks (False: this process runs
            them all and nothing is gathered).

    Under torchrun (see `coordatt_diag.runs.distributed`) each rank runs every world-th batch and the
    returned state holds the merged statistics of all ranks.

    Returns:
        The run's accumulators.
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    if dtype is None:
        dtype = model_dtype(model)
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise InputError("no input batch to run")
    first = _to(first, dev, dtype)
    # the discovery pass runs the first batch's first samples and keeps their statistics, so the
    # run does not run them again (not when discovery is cached, or ranks share the batches)
    fused = (blocks is None and discoveries is None and first.dim() > 0
             and first.shape[0] >= DISCOVERY_BATCH
             and (not shard or distributed.launched_world() <= 1))
    # two samples at least: a gate computed from a parameter has batch size 1 and must not pass
    # for a mask
    probe = (first[:DISCOVERY_BATCH] if fused else first[:2] if first.shape[0] >= 2
             else first.repeat(2, *([1] * (first.dim() - 1))))
    found: Discovery | None = None
    if blocks is None:
        found = (discoveries.discover(model, probe, blocks_pattern, measure=False)
                 if discoveries is not None
                 else discover(model, probe, blocks_pattern, measure=False, inference=inference,
                               keep=fused))
        blocks = list(found.blocks)
        if memory.enabled() and found.per_sample is None \
                and not memory.bound_fits(found.allocated, found.samples, first):
            # not surely fitting by the discovery pass's count: measure the exact peak
            found = (discoveries.discover(model, probe, blocks_pattern, measure=True)
                     if discoveries is not None
                     else replace(found, per_sample=_measure(model, probe)))
    state = RunState(blocks=list(blocks))
    head = found.first if found is not None else None
    if found is not None:
        found = replace(found, first=None)  # the run holds the kept masks only until it folds them
    if head is not None and state.sees_every_call(model):
        head = None
    group = distributed.group(dev) if shard else None
    error: tuple[str, str, int] | None = None
    try:
        if found is not None and found.per_sample is not None:
            with preserved_mode(model), _forward_errors(probe):
                # before the run, not halfway through it
                memory.check_batch(model, probe, first, per_sample=found.per_sample)
        with _grad_off(inference), state.capture(model):
            done = 0
            index = 0
            batch: torch.Tensor | None = first
            while batch is not None:
                if group is None or group.owns(index):
                    if head is not None:  # the first batch, its first samples counted already
                        state.seed(head)
                        head = None
                        if batch.shape[0] > DISCOVERY_BATCH:
                            _forward(model, batch[DISCOVERY_BATCH:])
                        state.close_seed()
                    else:
                        _forward(model, batch)
                    done += 1
                    if progress is not None:
                        progress(done)
                index += 1
                nxt = next(it, None)
                batch = _to(nxt, dev, dtype) if nxt is not None else None
    except Exception as exc:
        if group is None:
            raise
        error = distributed.error_payload(exc)  # the other ranks must hear of it
    if group is not None:
        state = _merged(state, error)
    return state


def _to(batch: torch.Tensor, dev: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """The batch on the model's device and in its dtype; pinned first for an async copy."""
    if dev.type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory()
    if dtype is not None and batch.is_floating_point() and batch.dtype != dtype:
        return batch.to(dev, dtype=dtype, non_blocking=True)
    return batch.to(dev, non_blocking=True)


def _merged(state: RunState, error: tuple[str, str, int] | None) -> RunState:
    """Gather every rank's accumulators and merge them in rank order (the same on each rank)."""
    payload = None if error is not None else distributed.to_device(state, "cpu")
    gathered = distributed.all_gather((payload, error))
    distributed.raise_first_error([err for _, err in gathered])
    merged: RunState = gathered[0][0]
    for other, _ in gathered[1:]:
        merged.merge(other)
    return merged


def place_model(model: nn.Module, device: str | None = None, half: bool = False,
                half_dtype: str = "float16") -> Placement:
    """Resolve `--device` / `--half` and move the model there (see `coordatt_diag.load.devices`).

    Raises:
        UsageError: a device this machine lacks, or `--half` without CUDA.
    """
    placement = resolve_placement(device, half, half_dtype)
    model.to(device=placement.device, dtype=placement.dtype)
    return placement


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
    """Everything `inspect` needs besides the checkpoint path (the CLI options).

    File and folder fields take a `str` or a `Path` (kept as `Path`); `imports` and `paths` take
    one name or a sequence of them. Each field is the command-line option of the same name
    (`imports` is `--import`, `paths` is `--path`, `model` is `--model`).
    """

    trust: bool = False
    model: str | None = None
    model_args: str | None = None
    imports: tuple[str, ...] = ()
    paths: tuple[PathArg, ...] = ()
    images: PathArg | None = None
    tensors: PathArg | None = None
    imgsz: int | None = None  # 224, or 640 for YOLO models (see inputs.input_size)
    normalize: str = "unit"
    batch_size: int = 8
    batches: int | None = None
    seed: int = 0
    blocks: str | None = None
    config: PathArg | None = None
    device: str | None = None  # cpu, cuda, cuda:N, auto (None: auto)
    half: bool = False
    half_dtype: str = "float16"
    effect: bool = False  # also measure the mask effect (coordatt_diag.runs.effect)
    labels: PathArg | None = None  # class indices of the inputs, for the effect's accuracy drop
    #: the training script whose classes a pickled model names as `__main__.X` (with `trust`)
    main_module: PathArg | None = None

    def __post_init__(self) -> None:
        # a Python caller writes InspectOptions(tensors="calib.pt", imports="mypkg.blocks")
        for name in ("images", "tensors", "config", "labels", "main_module"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        imports: Any = self.imports
        object.__setattr__(self, "imports",
                           (imports,) if isinstance(imports, str) else tuple(imports))
        paths: Any = self.paths
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        object.__setattr__(self, "paths", tuple(Path(p) for p in paths))


def inspect_checkpoint(
    path: PathArg,
    options: InspectOptions | None = None,
    progress: Progress | None = None,
    effect_progress: Progress | None = None,
) -> Report:
    """Load the checkpoint at `path`, run the inputs the options name, and return the report.

    With `options.effect`, the inputs are opened and run again for the mask effect
    (`coordatt_diag.runs.effect`), which reports the batches it has done to `effect_progress`.

    Args:
        path: the checkpoint file (`str` or `Path`).
        options: the inspect options (default: `InspectOptions()`, synthetic inputs).
        progress: called with the number of batches done.
        effect_progress: called with the number of mask-effect batches done.

    Returns:
        The judged report.

    Raises:
        DiagError: a `UsageError`, `CheckpointError`, `InputError` or `NoBlocksError` whose
            message names the problem and the setting to change.

    Example:
        >>> from coordatt_diag import InspectOptions, inspect_checkpoint
        >>> report = inspect_checkpoint("examples/digits_collapsed.pt", InspectOptions(
        ...     model="coordatt_diag.demo:digits_net", tensors="examples/digits_samples.pt"))
    """
    return _inspect(path, options or InspectOptions(), progress, effect_progress).report


@dataclass
class Inspection:
    """What an inspection ran, for a caller that goes on with the model (overlays): the report,
    the loaded model, its blocks and the device it ran on."""

    report: Report
    model: nn.Module
    blocks: list[BlockSpec]
    device: torch.device


def _inspect(
    path: PathArg,
    opts: InspectOptions,
    progress: Progress | None = None,
    effect_progress: Progress | None = None,
    watch_batches: Callable[[Iterable[torch.Tensor]], Iterable[torch.Tensor]] | None = None,
) -> Inspection:
    """`inspect_checkpoint`'s steps; `watch_batches` wraps the batch stream of the run (overlays
    keep its first samples)."""
    path = Path(path)
    from coordatt_diag.health.thresholds import load_thresholds
    from coordatt_diag.load.checkpoint import add_import_paths, load_model
    from coordatt_diag.load.inputs import input_channels, open_inputs

    thresholds = load_thresholds(opts.config)
    labels = _effect_labels(opts)
    _compile_pattern(opts.blocks)
    add_import_paths(list(opts.paths), list(opts.imports))
    loaded = load_model(path, trust=opts.trust, factory=opts.model, factory_args=opts.model_args,
                        main_module=opts.main_module)
    placement = place_model(loaded.model, opts.device, opts.half, opts.half_dtype)
    open_stream = functools.partial(
        open_inputs,
        images=opts.images, tensors=opts.tensors, channels=input_channels(loaded.model),
        imgsz=opts.imgsz, normalize=opts.normalize, batch_size=opts.batch_size,
        batches=opts.batches, seed=opts.seed, model=loaded.model,
    )
    stream = open_stream()
    batches: Iterable[torch.Tensor] = stream.batches()
    if watch_batches is not None:
        batches = watch_batches(batches)
    state = run_batches(loaded.model, batches, blocks_pattern=opts.blocks,
                        device=placement.device, progress=progress)
    effects = None
    if opts.effect:
        from coordatt_diag.runs.effect import effect_of_inputs

        effects = effect_of_inputs(loaded.model, state.blocks, open_stream, stream.info(),
                                   labels=labels, limited=opts.batches is not None,
                                   device=placement.device, progress=effect_progress)
    report = finalize(loaded.model, state, thresholds, loaded.info, stream.info(), effects=effects)
    return Inspection(report=report, model=loaded.model, blocks=state.blocks,
                      device=placement.device)


def _effect_labels(opts: InspectOptions) -> torch.Tensor | None:
    """The --labels file, read before anything runs (so a bad file fails fast)."""
    if opts.labels is None:
        return None
    if not opts.effect:
        raise UsageError(f"{opt('labels')} is used by the mask effect: add {opt('effect', True)}")
    from coordatt_diag.runs.effect import load_labels

    return load_labels(opts.labels)
