"""Find attention blocks in a model and capture their masks from the outside.

No model code is edited. A `torch.overrides.TorchFunctionMode` sees every torch call made while a
watched module runs (functions, tensor methods and operators alike: `torch.sigmoid`, `.sigmoid()`,
an `nn.Sigmoid` module, `F.hardsigmoid`, `nn.Hardsigmoid`, a hand-written `relu6(x + 3) / 6`) and
follows the data flow inside each module call:

* a **gate output** is the result of a gate call (sigmoid, hard sigmoid, `relu6(.)/6`,
  `clamp(., 0, 1)`) whose input is not just an elementwise function of the module's input (that
  would be an activation such as swish, not attention);
* gate outputs stay *gate-derived* through shape ops (permute, view, expand, split, ...), through
  products with each other (a_h * a_w) and through blending with scalars and parameters
  (`(1 - alpha) + alpha * att`, `1 + beta * (att - 1)`, clamps);
* the module's input is *x-derived*, and so is every product of an x-derived tensor with a
  gate-derived one (so CBAM's spatial gate, applied to the channel-gated input, is seen too);
* a **mask** of a module is a gate output that reaches such a product. It is captured as the gate
  computed it (before any alpha/beta blending), never recomputed.

Masks are named by their shape relative to the module input (B, C, H, W): `a_h` (B,C,H,1),
`a_w` (B,C,1,W) (or (B,C,W,1) later permuted), `a_hw` (B,C,H,W), `channel` (B,C,1,1) or (B,C),
`spatial` (B,1,H,W).

A *block* is a module with masks and parameters whose direct children with masks are not all
there is to it: a parent made only of attention children plus parameter-free glue (CBAM = channel
then spatial; `x + alpha * (att(x) - x)`) is one block holding all their parts, while a stage that
also holds other layers (an inverted residual, a YOLO C2f) is not a block, and its attention child
is.

`discover_blocks` runs one traced forward pass over every module to find the blocks;
`MaskCapture` is the context manager that then watches only those blocks on every batch, hands each
block's masks, input and output to a callback, and removes every hook and restores the model's
train/eval flags when it exits, also after an exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_GATES = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_"}
_RELU6 = {"relu6", "relu6_"}
_HARDTANH = {"hardtanh", "hardtanh_"}
_CLAMPS = {"clamp", "clamp_", "clip", "clip_"}
_MULS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
_DIVS = {"div", "div_", "__truediv__", "__itruediv__", "true_divide"}
_ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__",
         "__isub__", "rsub", "subtract"}
_SHAPE_OPS = {
    "permute", "transpose", "transpose_", "swapaxes", "swapdims", "view", "view_as", "reshape",
    "reshape_as", "expand", "expand_as", "broadcast_to", "contiguous", "clone", "detach", "to",
    "float", "double", "half", "bfloat16", "type", "type_as", "unsqueeze", "squeeze", "flatten",
    "unflatten", "repeat", "movedim", "moveaxis", "split", "chunk", "tensor_split", "unbind",
    "__getitem__", "narrow", "select", "mT", "t", "squeeze_", "unsqueeze_", "detach_",
}
_SCALE_OPS = _ADDS | _MULS | _DIVS | _CLAMPS | {"neg", "__neg__", "clamp_min", "clamp_max",
                                                "maximum", "minimum", "pow", "__pow__"}
_STARTERS = _GATES | _RELU6 | _HARDTANH | _CLAMPS
_ELEMENTWISE = _SCALE_OPS | _GATES | _RELU6 | _HARDTANH | {
    "abs", "exp", "log", "tanh", "relu", "relu_", "silu", "gelu", "sqrt", "square", "rsqrt",
    "__abs__", "leaky_relu", "elu", "hardswish", "mish", "softplus", "sign", "erf",
}


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if name is None:  # properties such as Tensor.mT arrive as their getter
        name = getattr(getattr(func, "fget", None), "__name__", "")
    return str(name)


@dataclass
class _Tag:
    """What a tensor seen inside a watched module call is made of."""

    gates: dict[int, bool] | None = None  # gate index -> transposed (last two dims swapped)
    x: bool = False  # the module input, or a product of it with masks
    pointwise: bool = False  # an elementwise function of the module input alone
    relu6: bool = False  # relu6(.) of something: becomes a hard-sigmoid gate when divided by 6
    blended: bool = False  # a gate-derived tensor mixed with a nonzero constant


@dataclass
class _Frame:
    """One call of one watched module."""

    name: str
    module: nn.Module
    x: torch.Tensor | None
    tags: dict[int, _Tag] = field(default_factory=dict)
    refs: list[torch.Tensor] = field(default_factory=list)  # keeps ids unique while the call runs
    masks: dict[int, bool] = field(default_factory=dict)  # gate index -> transposed at use
    ordinals: dict[int, int] = field(default_factory=dict)  # gate index -> n-th gate of this call
    n_gates: int = 0
    blended: bool = False
    entered: Any = None  # what MaskCapture's on_enter returned for this call
    # gates are shared by all frames of one forward pass (a gate belongs to every enclosing call)

    def tag(self, t: torch.Tensor) -> _Tag | None:
        return self.tags.get(id(t))

    def set(self, t: torch.Tensor, tag: _Tag) -> None:
        if id(t) not in self.tags:
            self.refs.append(t)
        self.tags[id(t)] = tag


@dataclass
class GateOutput:
    """A gate call's output seen during a forward pass."""

    tensor: torch.Tensor
    op: str
    activation: bool = False  # an activation (swish-like) inside some module, not a mask


#: Called with (block name, n-th gate output of the block's call, the gate output); a tensor it
#: returns replaces the gate output in the forward pass (mask ablation), None keeps it.
Replace = Callable[[str, int, torch.Tensor], "torch.Tensor | None"]


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    return []


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> torch.Tensor | None:
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, torch.Tensor):
                    return t
    return None


def _scalar_value(a: Any, exact: bool) -> float | None:
    """The value of a Python number or one-element tensor, None when it is not a scalar.

    Reading a tensor's value synchronises with its device, so it happens only while discovering.
    """
    if isinstance(a, bool):
        return float(a)
    if isinstance(a, (int, float)):
        return float(a)
    if isinstance(a, torch.Tensor) and a.numel() == 1:
        return float(a.detach().reshape(()).item()) if exact else math.nan
    return None


def _is_batchless(t: torch.Tensor, batch: int) -> bool:
    """A tensor that does not vary per sample: a parameter, a buffer, a scalar, a (1,C,1,1) gain."""
    return t.numel() == 1 or t.dim() < 2 or t.shape[0] != batch or isinstance(t, nn.Parameter)


def _flips_last_two(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if name in ("mT",):
        return True
    if name == "t":
        return True
    src = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if src is None or src.dim() < 2:
        return False
    nd = src.dim()
    if name == "permute":
        dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else kwargs.get("dims", ()))
        dims = tuple(int(d) % nd for d in dims)  # type: ignore[union-attr]
        return len(dims) == nd and dims[-2:] == (nd - 1, nd - 2) and dims[:-2] == tuple(range(nd - 2))
    if name in ("transpose", "transpose_", "swapaxes", "swapdims"):
        rest = list(args[1:3]) + [kwargs.get(k) for k in ("dim0", "dim1") if k in kwargs]
        if len(rest) < 2:
            return False
        pair = {int(rest[0]) % nd, int(rest[1]) % nd}
        return pair == {nd - 1, nd - 2}
    return False


class _Tracer(TorchFunctionMode):
    """Follows gates, masks and the module input through every torch call of the open frames."""

    def __init__(self, exact_scalars: bool, replace: Replace | None = None) -> None:
        super().__init__()
        self.frames: list[_Frame] = []
        self.gates: list[GateOutput] = []
        self.exact_scalars = exact_scalars
        self.replace = replace

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.frames:
            out = self._follow(_op_name(func), args, kwargs, out)
        return out

    def _follow(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        arg_tensors = _tensors_in(args) + _tensors_in(list(kwargs.values()))
        outs = _tensors_in(out)
        if not outs:
            return out
        gate_index: int | None = None
        activation = False
        for frame in self.frames:
            tags = [frame.tag(t) for t in arg_tensors]
            if not any(tags) and name not in _STARTERS:
                continue
            new = self._new_tag(frame, name, args, kwargs, arg_tensors, tags, outs[0])
            if new is None:
                continue
            if frame is self.frames[-1] and new.pointwise and new.gates is None:
                activation = True
            if new.gates is not None and new.gates == {-1: False}:  # a fresh gate output
                ordinal = frame.n_gates
                frame.n_gates += 1
                if (self.replace is not None and frame is self.frames[0]
                        and isinstance(out, torch.Tensor)):
                    swapped = self.replace(frame.name, ordinal, out)
                    if swapped is not None:
                        out = swapped
                        outs = [swapped]
                if gate_index is None:
                    gate_index = len(self.gates)
                    self.gates.append(GateOutput(outs[0], name))
                frame.ordinals[gate_index] = ordinal
                new.gates = {gate_index: False}
            for o in outs:
                frame.set(o, new)
        if gate_index is not None and activation:
            # the innermost module computed it from its own input alone: swish, h_swish
            self.gates[gate_index].activation = True
        return out

    def _new_tag(
        self,
        frame: _Frame,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        arg_tensors: list[torch.Tensor],
        tags: list[_Tag | None],
        out: torch.Tensor,
    ) -> _Tag | None:
        first = tags[0] if tags else None
        batch = frame.x.shape[0] if frame.x is not None and frame.x.dim() > 0 else -1
        all_pointwise = bool(tags) and all(
            (t is not None and t.pointwise) or _is_batchless(a, batch)
            for a, t in zip(arg_tensors, tags, strict=False)
        )
        pointwise = (
            name in _ELEMENTWISE
            and all_pointwise
            and frame.x is not None
            and out.shape == frame.x.shape
        )

        # Gate calls start a new gate output, unless their input is the module input itself
        # (x * sigmoid(x) is swish, an activation, not attention).
        if name in _GATES and not (first is not None and first.gates is not None):
            if first is not None and first.pointwise:
                return _Tag(pointwise=pointwise)
            return _Tag(gates={-1: False})
        if name in _RELU6 or (name in _HARDTANH and _hardtanh_is_relu6(args, kwargs)):
            if first is not None and first.pointwise:
                return _Tag(pointwise=pointwise)
            return _Tag(relu6=True)
        if name in _CLAMPS and (first is None or first.gates is None):
            lo, hi = _clamp_bounds(args, kwargs)
            if (lo, hi) == (0.0, 6.0):
                return None if first is not None and first.pointwise else _Tag(relu6=True)
            if (lo, hi) == (0.0, 1.0) and not (first is not None and first.pointwise):
                return _Tag(gates={-1: False})
            return _Tag(pointwise=pointwise) if pointwise else None
        if first is not None and first.relu6 and len(args) > 1:
            v = _scalar_value(args[1], exact=True)
            if (name in _DIVS and v == 6.0) or (name in _MULS and v is not None
                                                and abs(v - 1 / 6) < 1e-6):
                return _Tag(gates={-1: False})

        gate_tags = [t for t in tags if t is not None and t.gates is not None]
        x_args = [a for a, t in zip(arg_tensors, tags, strict=False) if t is not None and t.x]

        # x * mask: record the masks, the product is x-derived.
        if name in _MULS and x_args and gate_tags and len(arg_tensors) == 2:
            mask_tag = next((t for t in gate_tags if not t.x), None)
            if mask_tag is not None and mask_tag.gates is not None:
                for g, transposed in mask_tag.gates.items():
                    frame.masks[g] = transposed
                frame.blended = frame.blended or mask_tag.blended
                return _Tag(x=True)

        if name in _SHAPE_OPS and first is not None:
            gates = first.gates
            if gates is not None and _flips_last_two(name, args, kwargs):
                gates = {g: not tr for g, tr in gates.items()}
            return _Tag(gates=gates, x=first.x, pointwise=first.pointwise and out.shape == (
                frame.x.shape if frame.x is not None else None), blended=first.blended)

        if gate_tags and name in _SCALE_OPS:
            others_ok = all(
                (t is not None and t.gates is not None) or _is_batchless(a, batch)
                for a, t in zip(arg_tensors, tags, strict=False)
            )
            if others_ok:
                union: dict[int, bool] = {}
                blended = any(t.blended for t in gate_tags)
                for t in gate_tags:
                    union.update(t.gates or {})
                if name in _ADDS:
                    blended = blended or self._adds_constant(args, kwargs, tags)
                return _Tag(gates=union, blended=blended)
        if pointwise:
            return _Tag(pointwise=True)
        return None

    def _adds_constant(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                       tags: list[_Tag | None]) -> bool:
        """Whether an add/sub mixes a gate-derived tensor with a nonzero constant."""
        tensor_tags = iter(tags)
        for a in list(args) + list(kwargs.values()):
            if not isinstance(a, torch.Tensor):
                v = _scalar_value(a, exact=True)
                if v is not None and v != 0.0:
                    return True
                continue
            tag = next(tensor_tags, None)
            if tag is not None and tag.gates is not None:
                continue
            # a one-element tensor (1 - alpha) is read while discovering; nan (unknown) and a
            # per-channel constant count as nonzero
            v = _scalar_value(a, exact=self.exact_scalars)
            if v is None or v != 0.0:
                return True
        return False


def _hardtanh_is_relu6(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return float(lo) == 0.0 and float(hi) == 6.0


def _clamp_bounds(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[float | None, float | None]:
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    lo_v = _scalar_value(lo, exact=True) if lo is not None else None
    hi_v = _scalar_value(hi, exact=True) if hi is not None else None
    return lo_v, hi_v


# ---------------------------------------------------------------------------------------------
# Mask naming


def classify_mask(shape: torch.Size, transposed: bool, x_shape: torch.Size) -> str | None:
    """Name a gate output by its shape relative to the block input, or None if it is no mask."""
    if len(x_shape) != 4 or len(shape) == 0:
        return None
    b, c, h, w = x_shape
    if shape[0] != b:
        return None
    s = tuple(shape[1:])
    n = math.prod(s)
    if len(s) == 3:
        oriented = (s[0], s[2], s[1]) if transposed else s
        if oriented == (c, h, 1) and (h > 1 or w == 1):
            return "a_h"
        if oriented == (c, 1, w) and w > 1:
            return "a_w"
        if oriented == (c, h, w) and h * w > 1:
            return "a_hw"
        if oriented == (1, h, w) and h * w > 1:
            return "spatial"
        if s == (c, 1, 1):
            return "channel"
    if n == c and (c > 1 or h * w == 1):
        return "channel"
    if n == c * h * w and h * w > 1:
        return "a_hw"
    if n == h * w and h * w > 1:
        return "spatial"
    return None


def canonical(mask: torch.Tensor, kind: str, transposed: bool, x_shape: torch.Size) -> torch.Tensor:
    """The mask as (B, C, H, W)-style 4-D tensor in the canonical layout of its kind."""
    b, c, h, w = x_shape
    m = mask
    if transposed and m.dim() >= 2:
        m = m.transpose(-1, -2)
    if kind == "a_h":
        return m.reshape(b, c, h, 1)
    if kind == "a_w":
        return m.reshape(b, c, 1, w)
    if kind == "a_hw":
        return m.reshape(b, c, h, w)
    if kind == "channel":
        return m.reshape(b, c, 1, 1)
    return m.reshape(b, 1, h, w)


def block_kind(mask_kinds: list[str]) -> str:
    """A block's family, from the masks it computes."""
    kinds = {k.split("#")[0] for k in mask_kinds}
    coord = bool(kinds & {"a_h", "a_w"})
    if coord and "channel" in kinds:
        return "coordinate+channel"
    if coord:
        return "coordinate"
    if "a_hw" in kinds:
        return "coordinate-map"
    if "channel" in kinds and "spatial" in kinds:
        return "cbam"
    if "channel" in kinds:
        return "channel"
    if "spatial" in kinds:
        return "spatial"
    return "other"


# ---------------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True)
class MaskSite:
    """One mask of a block: which gate call (in call order within the block) and its kind."""

    kind: str
    op: str


@dataclass(frozen=True)
class BlockSpec:
    """A block found by `discover_blocks`.

    Attributes:
        name: module name as in `named_modules()`.
        type: class name.
        kind: block family from its masks.
        masks: mask names in the order the block computed them.
        identity_path: the block keeps part of its input unscaled.
        feature: [C, H, W] of its input.
        forced: named by `--blocks` although the automatic search did not select it.
        mask_gates: for each mask, which gate output of the block's call it is (0 = the first
            gate the call computes), so a mask can be replaced in later passes (`Replace`).
    """

    name: str
    type: str
    kind: str
    masks: tuple[str, ...]
    identity_path: bool
    feature: tuple[int, ...]
    forced: bool = False
    mask_gates: tuple[int, ...] = ()


@dataclass
class _Observed:
    masks: list[tuple[str, str]] = field(default_factory=list)  # (kind, op) per used gate
    ordinals: list[int] = field(default_factory=list)  # n-th gate of the call, per mask
    all_gates: list[tuple[str, str]] = field(default_factory=list)  # classifiable gates inside
    blended: bool = False
    residual: bool = False
    feature: tuple[int, ...] = ()


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _mask_names(kinds: list[str]) -> tuple[str, ...]:
    """Unique names: a second mask of the same kind is `a_h#2`, and so on."""
    seen: dict[str, int] = {}
    names = []
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
        names.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
    return tuple(names)


class _DiscoveryHooks:
    """Opens a frame for every module call during one traced forward pass."""

    def __init__(self, model: nn.Module, tracer: _Tracer) -> None:
        self.tracer = tracer
        self.names = {m: n for n, m in model.named_modules()}
        self.observed: dict[str, _Observed] = {}
        self.handles: list[Any] = []
        for module in self.names:
            self.handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post, with_kwargs=True,
                                                             always_call=True))

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _first_tensor(args, kwargs)
        frame = _Frame(self.names[module], module, x)
        if x is not None:
            frame.set(x, _Tag(x=True, pointwise=True))
        self.tracer.frames.append(frame)

    def _post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
              output: Any) -> None:
        frames = self.tracer.frames
        if not frames or frames[-1].module is not module:
            return
        frame = frames.pop()
        obs = self.observed.setdefault(frame.name, _Observed())
        x = frame.x
        if x is None or x.dim() != 4:
            return
        if not obs.feature:
            obs.feature = tuple(int(s) for s in x.shape[1:])
        for gate_index in sorted(frame.masks):
            g = self.tracer.gates[gate_index]
            kind = classify_mask(g.tensor.shape, frame.masks[gate_index], x.shape)
            ordinal = frame.ordinals.get(gate_index)
            if kind is not None and ordinal is not None and ordinal not in obs.ordinals:
                obs.masks.append((kind, g.op))
                obs.ordinals.append(ordinal)
        if frame.masks:
            obs.blended = obs.blended or frame.blended
            out = _first_tensor((output,))
            tag = frame.tag(out) if out is not None else None
            obs.residual = obs.residual or tag is None or not tag.x
        for ref in frame.refs:
            tag = frame.tags.get(id(ref))
            if tag is not None and tag.gates is not None and len(tag.gates) == 1:
                (g_index, tr), = tag.gates.items()
                g = self.tracer.gates[g_index]
                if g.tensor is ref and not g.activation:
                    kind = classify_mask(ref.shape, tr, x.shape)
                    if kind is not None:
                        obs.all_gates.append((kind, g.op))
        frame.refs.clear()
        frame.tags.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def discover_blocks(
    model: nn.Module,
    sample: torch.Tensor,
    pattern: str | None = None,
) -> list[BlockSpec]:
    """Find the attention blocks of `model` with one traced forward pass on `sample`.

    Args:
        model: the model (put in eval mode by the caller; its flags are not changed here).
        sample: a small input batch.
        pattern: a regular expression; when given, only blocks whose name matches are kept, and a
            matching module that the automatic search did not select but that computes gate
            outputs shaped like masks is watched too (its gate outputs are its masks).

    Returns:
        The blocks in model order (possibly empty).
    """
    regex = re.compile(pattern) if pattern else None
    tracer = _Tracer(exact_scalars=True)
    hooks = _DiscoveryHooks(model, tracer)
    try:
        with tracer:
            model(sample)
    finally:
        hooks.remove()
        tracer.frames.clear()
        tracer.gates.clear()
    observed = hooks.observed
    modules = dict(model.named_modules(remove_duplicate=False))

    def candidate(name: str) -> bool:
        obs = observed.get(name)
        return bool(obs and obs.masks) and _has_params(modules[name])

    chosen: list[str] = []

    def select(name: str) -> None:
        module = modules[name]
        children = [(f"{name}.{c}" if name else c) for c, _ in module.named_children()]
        if candidate(name):
            masked = [c for c in children if candidate(c)]
            plain = [c for c in children if not candidate(c) and _has_params(modules[c])]
            if not masked or not plain:
                chosen.append(name)
                return
        for c in children:
            select(c)

    select("")
    specs: list[BlockSpec] = []
    for name in chosen:
        if regex is not None and not regex.search(name):
            continue
        obs = observed[name]
        kinds = [k for k, _ in obs.masks]
        specs.append(BlockSpec(
            name=name,
            type=type(modules[name]).__name__,
            kind=block_kind(kinds),
            masks=_mask_names(kinds),
            identity_path=obs.blended or obs.residual,
            feature=obs.feature,
            mask_gates=tuple(obs.ordinals),
        ))
    if regex is not None:
        taken = [s.name for s in specs]
        for name, module in modules.items():
            if not regex.search(name) or name in taken:
                continue
            if any(_within(name, t) or _within(t, name) for t in taken):
                continue
            seen = observed.get(name)
            if seen is None or not seen.all_gates:
                continue
            kinds = [k for k, _ in seen.all_gates]
            specs.append(BlockSpec(
                name=name, type=type(module).__name__, kind=block_kind(kinds),
                masks=_mask_names(kinds), identity_path=False, feature=seen.feature, forced=True,
            ))
            taken.append(name)
        order = {n: i for i, n in enumerate(modules)}
        specs.sort(key=lambda s: order[s.name])
    return specs


def _within(name: str, parent: str) -> bool:
    return parent == "" or name.startswith(parent + ".")


# ---------------------------------------------------------------------------------------------
# Watching blocks batch after batch


@dataclass
class BlockCall:
    """What one block did in one forward pass, handed to the capture callback.

    Attributes:
        spec: the block.
        x: its input (as it is after the block ran: a block may change it in place).
        out: its output (first tensor of a tuple output).
        masks: mask name -> mask in canonical layout (see `canonical`).
        entered: what `on_enter` returned for this call, taken before the block ran.
    """

    spec: BlockSpec
    x: torch.Tensor
    out: torch.Tensor | None
    masks: dict[str, torch.Tensor]
    entered: Any = None


class MaskCapture:
    """Watch the given blocks: a context manager that owns every hook.

    On entry it registers a forward pre-hook and a forward hook on each block; the pre-hook opens a
    frame and switches the tracer on, the hook hands the block's masks to `on_block` and switches
    the tracer off again, so layers outside the blocks run at full speed. On exit, whatever
    happened, every hook is removed, the tracer is off and each module's train/eval flag is what
    it was on entry.

    Example:
        >>> with MaskCapture(model, blocks, on_block=print) as cap:
        ...     model(x)
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: list[BlockSpec],
        on_block: Callable[[BlockCall], None],
        eval_mode: bool = True,
        replace: Replace | None = None,
        on_enter: Callable[[BlockSpec, torch.Tensor], Any] | None = None,
    ) -> None:
        self.model = model
        self.blocks = blocks
        self.on_block = on_block
        self.on_enter = on_enter
        self.eval_mode = eval_mode
        self._handles: list[Any] = []
        self._training: dict[nn.Module, bool] = {}
        self._tracer = _Tracer(exact_scalars=False, replace=replace)
        self._active = False
        self.missing: list[str] = []  # blocks whose masks were not seen in some call

    def __enter__(self) -> MaskCapture:
        self._training = {m: m.training for m in self.model.modules()}
        try:
            if self.eval_mode:
                self.model.eval()
            modules = dict(self.model.named_modules(remove_duplicate=False))
            for spec in self.blocks:
                module = modules[spec.name]
                self._handles.append(module.register_forward_pre_hook(
                    self._make_pre(spec, module), with_kwargs=True))
                self._handles.append(module.register_forward_hook(
                    self._make_post(spec, module), always_call=True))
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._switch_off()
        self._tracer.frames.clear()
        self._tracer.gates.clear()
        for m, flag in self._training.items():
            m.training = flag

    def _switch_off(self) -> None:
        if self._active:
            self._tracer.__exit__(None, None, None)
            self._active = False

    def _make_pre(self, spec: BlockSpec, module: nn.Module) -> Callable[..., None]:
        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = _first_tensor(args, kwargs)
            frame = _Frame(spec.name, module, x)
            if x is not None:
                frame.set(x, _Tag(x=True, pointwise=True))
                if self.on_enter is not None and x.dim() == 4:
                    frame.entered = self.on_enter(spec, x)
            self._tracer.frames.append(frame)
            if not self._active:
                self._tracer.__enter__()
                self._active = True
        return pre

    def _make_post(self, spec: BlockSpec, module: nn.Module) -> Callable[..., None]:
        def post(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            frames = self._tracer.frames
            if not frames or frames[-1].module is not module:
                return
            frame = frames.pop()
            if not frames:
                self._switch_off()
            try:
                self._emit(spec, frame, output)
            finally:
                if not frames:
                    self._tracer.gates.clear()
                frame.refs.clear()
                frame.tags.clear()
        return post

    def _emit(self, spec: BlockSpec, frame: _Frame, output: Any) -> None:
        x = frame.x
        if x is None or x.dim() != 4:
            return
        gates = self._tracer.gates
        if spec.forced:
            picked = []
            for ref in frame.refs:
                tag = frame.tags.get(id(ref))
                if tag is not None and tag.gates and len(tag.gates) == 1:
                    (g, tr), = tag.gates.items()
                    if gates[g].tensor is ref and not gates[g].activation:
                        picked.append((g, tr))
        else:
            picked = sorted(frame.masks.items())
            if spec.mask_gates:
                # the gates discovery named masks; with a batch of one, a per-channel gate
                # parameter (1, C, 1, 1) would otherwise pass for a mask
                by_ordinal = [(g, tr) for g, tr in picked
                              if frame.ordinals.get(g) in spec.mask_gates]
                if len(by_ordinal) == len(spec.mask_gates):
                    picked = by_ordinal
        kinds: list[str] = []
        tensors: list[torch.Tensor] = []
        for g, tr in picked:
            t = gates[g].tensor
            kind = classify_mask(t.shape, tr, x.shape)
            if kind is None:
                continue
            kinds.append(kind)
            tensors.append(canonical(t, kind, tr, x.shape))
        masks = dict(zip(_mask_names(kinds), tensors, strict=True))
        if set(masks) != set(spec.masks):
            self.missing.append(spec.name)
        out = _first_tensor((output,))
        self.on_block(BlockCall(spec=spec, x=x, out=out, masks=masks, entered=frame.entered))
