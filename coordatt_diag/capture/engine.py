"""Find attention blocks in a model and capture their masks from the outside.

No model code is edited. A `torch.overrides.TorchFunctionMode` sees every torch call (functions,
tensor methods and operators alike: `torch.sigmoid`, `.sigmoid()`, an `nn.Sigmoid` module,
`F.hardsigmoid`, a hand-written `relu6(x + 3) / 6`, `nn.Softmax(dim=1)`). Masks are defined by how
they are *used*, not by where they are made:

* a **gate** is a call whose output is a weighting: sigmoid, hard sigmoid in its spellings
  (`hardsigmoid`, `relu6(.) / 6`, `relu6(.) * (1/6)`, `hardtanh(., 0, 6) / 6`, `clamp(., 0, 6) / 6`),
  `clamp(., 0, 1)`, `hardtanh(., 0, 1)`, `softmax`, `1 + tanh(.)`;
* gate outputs stay *gate-derived* through shape ops (view, permute, split, indexing, cat, ...),
  products with each other (a_h * a_w), blending with constants and parameters
  (`(1 - alpha) + alpha * att`) and resampling (pooling, interpolation); for every gate-derived
  tensor a parallel index tensor follows which gate element sits where;
* a **mask** is a gate whose output reaches an elementwise product with a **feature tensor** of the
  same sample (anything with a batch axis that is not itself gate-derived: the module input, a
  child's output, a branch, a grouped view `(B*G, C/G, H, W)`). A gate computed from an
  elementwise function of the very tensor it weights is an activation (SiLU, h_swish), and a
  softmax consumed by a matrix product (token self-attention) never reaches such a product;
* a mask's **kind** comes from how it broadcasts against the tensor it multiplies, in that tensor's
  layout (regrouped to `(B, C, H, W)` when the batch was split into groups): `a_h` (varies along
  C and H), `a_w` (C, W), `a_hw` (C, H, W), `channel` (C), `spatial` (H, W; per group when
  grouped), `select` (weights across a branch axis: SK/EPSA `(B, M, C, 1, 1)` against stacked
  branches, or one gate whose slices weight different branches, LSK), `other` (anything else);
* a **block** is the smallest module whose call contains both the gate and the product it drives
  (a residual block doing `out = self.ca(out) * out`; a parent doing `x * self.se(x)`). A parent
  whose children are attention blocks plus parameter-free glue is one block holding them all
  (CBAM = channel gate then spatial gate; Triplet attention's three branches); each mask names
  the part it comes from.

`discover_blocks` runs one traced forward pass to find the blocks and, for each mask, which gate
call of the block's call it is, how to lay its values out and, when a module's forward returns
the gate output as it computed it (an `nn.Sigmoid`, an `nn.Hardsigmoid`, a user's `h_sigmoid` or
gate module), that module and which of its calls in the block's call it is. `MaskCapture` then
watches only those blocks, batch after batch, with the tracer off: a block whose masks all come
from gate modules is read by forward hooks on those modules (the n-th call of a module shared by
two masks, or by two blocks, maps to its mask as discovery named it); only a block whose gates are
computed inside a forward (`torch.sigmoid(.)`, `.sigmoid()`, `F.hardsigmoid`) switches a gate
counter (a TorchFunctionMode) on for the length of its call. Either way the masks are the gates'
own outputs, exact, never recomputed. It hands each block's masks, input and output to a
callback, and removes every hook and restores the model's train/eval flags when it exits, also
after an exception.
"""

from __future__ import annotations

import contextlib
import math
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: Batch size of the discovery pass: odd and larger than the usual number of branches (2-4), so
#: that a batch axis is not mistaken for a branch axis.
DISCOVERY_BATCH = 5
#: Most bytes of gate outputs a traced pass keeps for the run's statistics (`trace_blocks` with
#: `moments`); past it the pass keeps nothing and the run reads its first batch again.
KEEP_LIMIT = 64 * 2**20
#: Python operators that write into their left operand.
_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                    "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
                    "__irshift__", "__setitem__"}

_SIGMOIDS = {"sigmoid": "sigmoid", "sigmoid_": "sigmoid", "hardsigmoid": "hardsigmoid",
             "hardsigmoid_": "hardsigmoid"}
_SOFTMAX = {"softmax"}
_RELU6 = {"relu6", "relu6_"}
_HARDTANH = {"hardtanh", "hardtanh_"}
_CLAMPS = {"clamp", "clamp_", "clip", "clip_"}
_TANH = {"tanh", "tanh_"}
_MULS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
_DIVS = {"div", "div_", "__truediv__", "__itruediv__", "true_divide"}
_PLUS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
_ADDS = _PLUS | {"sub", "sub_", "__sub__", "__rsub__", "__isub__", "rsub", "subtract"}
#: every op the gate detector looks at; anything else passes at the cost of one set lookup
_EVENT_OPS = (set(_SIGMOIDS) | _SOFTMAX | _RELU6 | _HARDTANH | _CLAMPS | _TANH | _MULS | _DIVS
              | _PLUS)
_KEEP_IDX = {  # dtype/device/copy ops: the index tensor stays as it is
    "contiguous", "clone", "detach", "detach_", "to", "float", "double", "half", "bfloat16",
    "type", "type_as", "cpu", "cuda", "requires_grad_",
}
_SHAPE_OPS = _KEEP_IDX | {
    "permute", "transpose", "transpose_", "swapaxes", "swapdims", "view", "view_as", "reshape",
    "reshape_as", "expand", "expand_as", "broadcast_to", "unsqueeze", "squeeze", "flatten",
    "unflatten", "repeat", "movedim", "moveaxis", "split", "chunk", "tensor_split", "unbind",
    "__getitem__", "narrow", "select", "mT", "t", "squeeze_", "unsqueeze_", "roll", "flip",
    "split_with_sizes", "repeat_interleave", "tile",
}
_JOIN = {"cat", "concat", "concatenate", "stack"}
_RESAMPLE = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool1d",
    "avg_pool2d", "max_pool2d", "interpolate", "upsample", "upsample_nearest2d",
    "upsample_bilinear2d", "pixel_shuffle", "pixel_unshuffle",
}
_SCALE_OPS = _ADDS | _MULS | _DIVS | _CLAMPS | {
    "neg", "__neg__", "clamp_min", "clamp_max", "maximum", "minimum", "pow", "__pow__", "abs",
    "sqrt", "square", "relu", "relu_", "where", "lerp", "masked_fill", "nan_to_num",
}
_ELEMENTWISE = _SCALE_OPS | set(_SIGMOIDS) | _RELU6 | _HARDTANH | _TANH | {
    "exp", "log", "rsqrt", "__abs__", "leaky_relu", "elu", "gelu", "silu", "hardswish", "mish",
    "softplus", "sign", "erf", "relu6", "dropout",
}
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "logsumexp"}

_NAMES: dict[Any, str] = {}


def _op_name(func: Any) -> str:
    name = _NAMES.get(func)
    if name is None:
        name = getattr(func, "__name__", None)
        if name is None:  # properties such as Tensor.mT arrive as their getter
            name = getattr(getattr(func, "fget", None), "__name__", "")
        name = str(name)
        with contextlib.suppress(TypeError):  # unhashable callables are not cached
            _NAMES[func] = name
    return name


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    found: list[torch.Tensor] = []
    if isinstance(obj, (list, tuple)):
        for o in obj:
            if isinstance(o, torch.Tensor):
                found.append(o)
            elif isinstance(o, (list, tuple)):
                found.extend(_tensors_in(o))
    return found


def _storage_ptr(t: torch.Tensor) -> int | None:
    """Where `t`'s storage starts (None for a tensor without a plain storage)."""
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return None


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> torch.Tensor | None:
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, torch.Tensor):
                    return t
    return None


def _number(a: Any) -> float | None:
    """A Python number's value (tensors are never read: that would synchronise a device)."""
    if isinstance(a, (bool, int, float)):
        return float(a)
    return None


def _bounds(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    if name in _HARDTANH:
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    else:
        lo = args[1] if len(args) > 1 else kwargs.get("min")
        hi = args[2] if len(args) > 2 else kwargs.get("max")
    return _number(lo), _number(hi)


class _Gates:
    """Recognises gate calls, the same way while discovering and while watching.

    `event` returns the gate's label when `out` is a fresh gate output, else None. Two-step
    spellings (`relu6(.) / 6`, `1 + tanh(.)`) keep their first step in a short list of pending
    tensors (strong references, at most four, so nothing large is kept for long).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, str, torch.Tensor | None]] = []
        self.source: torch.Tensor | None = None  # input of the first step of the last event

    def _pend(self, out: Any, kind: str, src: Any) -> None:
        if isinstance(out, torch.Tensor):
            self.pending.append((out, kind, src if isinstance(src, torch.Tensor) else None))
            if len(self.pending) > 4:
                del self.pending[0]

    def _take(self, t: Any, kind: str) -> bool:
        for i, (p, k, src) in enumerate(self.pending):
            if p is t and k == kind:
                self.source = src
                del self.pending[i]
                return True
        return False

    def event(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> str | None:
        if name not in _EVENT_OPS or not args:
            return None
        a0 = args[0]
        if name in _SIGMOIDS:
            self.source = a0 if isinstance(a0, torch.Tensor) else None
            return _SIGMOIDS[name]
        if name in _SOFTMAX:
            self.source = None
            return "softmax"
        if name in _RELU6:
            self._pend(out, "relu6", a0)
            return None
        if name in _HARDTANH or name in _CLAMPS:
            lo, hi = _bounds(name, args, kwargs)
            if (lo, hi) == (0.0, 6.0):
                self._pend(out, "relu6", a0)
            elif (lo, hi) == (0.0, 1.0):
                self.source = a0 if isinstance(a0, torch.Tensor) else None
                return "clamp01"
            return None
        if name in _TANH:
            self._pend(out, "tanh", a0)
            return None
        if not self.pending or len(args) < 2:
            return None
        a1 = args[1]
        if name in _DIVS:
            if _number(a1) == 6.0 and self._take(a0, "relu6"):
                return "hardsigmoid"
            return None
        if name in _MULS:
            for t, s in ((a0, a1), (a1, a0)):
                v = _number(s)
                if v is not None and abs(v - 1 / 6) < 1e-6 and self._take(t, "relu6"):
                    return "hardsigmoid"
            return None
        # add: 1 + tanh(.)
        for t, s in ((a0, a1), (a1, a0)):
            if _number(s) == 1.0 and self._take(t, "tanh"):
                return "1+tanh"
        return None


def _is_batchless(t: torch.Tensor, batch: int) -> bool:
    """A tensor that does not vary per sample: a parameter, a buffer, a scalar, a (1,C,1,1) gain."""
    return (t.numel() == 1 or t.dim() < 2 or isinstance(t, nn.Parameter)
            or (t.shape[0] % batch != 0 and (t.dim() < 2 or t.shape[1] != batch)))


def _batch_axis(t: torch.Tensor | torch.Size, batch: int) -> int | None:
    shape = t.shape if isinstance(t, torch.Tensor) else t
    if len(shape) >= 1 and shape[0] % batch == 0 and shape[0] > 0:
        return 0
    if len(shape) >= 2 and shape[1] == batch:
        return 1
    return None


# ---------------------------------------------------------------------------------------------
# Mask naming and layout


def classify_mask(shape: torch.Size, transposed: bool, x_shape: torch.Size) -> str | None:
    """Name a gate output by its own shape relative to a block input, or None if it is no mask.

    Used for blocks named by `--blocks` that the search did not select, where no product tells
    how the gate is used.
    """
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


def _canonical_shape(kind: str, x_shape: torch.Size) -> tuple[int, int, int]:
    _, c, h, w = x_shape
    return {"a_h": (c, h, 1), "a_w": (c, 1, w), "a_hw": (c, h, w), "channel": (c, 1, 1),
            "spatial": (1, h, w)}[kind]


def canonical(mask: torch.Tensor, kind: str, transposed: bool, x_shape: torch.Size) -> torch.Tensor:
    """A mask as a (B, C, H, W)-style 4-D tensor in the canonical layout of its kind."""
    m = mask
    if transposed and m.dim() >= 2:
        m = m.transpose(-1, -2)
    return m.reshape(x_shape[0], *_canonical_shape(kind, x_shape))


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
    if "select" in kinds:
        return "select"
    return "other"


@dataclass(frozen=True)
class MaskSite:
    """How one mask is read from its gate's output on every batch.

    Attributes:
        kind: a_h, a_w, a_hw, channel, spatial, select or other.
        op: the gate (sigmoid, hardsigmoid, softmax, clamp01, 1+tanh).
        gate: which gate call of the block's call it is (0 = the first).
        part: the child (path relative to the block) the gate belongs to; '' for the block itself.
        batch_axis: the gate output's batch axis (0, or 1 for a (branches, B, ...) layout).
        shape: the canonical per-sample shape (3 numbers); the mask is (B, *shape).
        index: per-sample positions of the gate output to take, in canonical order; None when
            the gate output, batch axis first, already is in canonical order.
        follow: the block input's (H, W) at discovery where the mask's H (W) follows the
            input's, 0 where it does not (so other input sizes lay out right).
        gate_module: the module (path relative to the block) whose forward output is the gate
            output (an nn.Sigmoid, a hard-sigmoid or gate module), so that a forward hook reads
            it; None for a gate computed inside a forward (torch.sigmoid, .sigmoid(),
            F.hardsigmoid), which the tracer reads.
        gate_call: which call of `gate_module` inside the block's call it is (0 = the first):
            one module may compute several gates (a shared nn.Sigmoid for a_h and a_w).
    """

    kind: str
    op: str
    gate: int = 0
    part: str = ""
    batch_axis: int = 0
    shape: tuple[int, int, int] = (1, 1, 1)
    index: torch.Tensor | None = field(default=None, compare=False, repr=False)
    follow: tuple[int, int] = (0, 0)
    gate_module: str | None = None
    gate_call: int = 0

    def read(self, gate: torch.Tensor, batch: int, hw: tuple[int, int] | None = None,
             index: torch.Tensor | None = None) -> torch.Tensor:
        """The mask as (batch, C, H, W)-style tensor from one gate output (a view unless an index
        is needed). `hw` is the block input's (H, W) in this call: a mask whose H or W follows
        the input's (`follow` holds the input's H and W at discovery, 0 where fixed) is laid out
        at this call's size. `index` is `self.index` on the gate's device (the caller's copy).
        """
        g = gate.movedim(self.batch_axis, 0) if self.batch_axis else gate
        if self.index is not None:
            idx = self.index if index is None else index
            return g.reshape(batch, -1)[:, idx].reshape(batch, *self.shape)
        c, h, w = self.shape
        if hw is not None:
            if self.follow[0]:
                h = hw[0] * h // self.follow[0]
            if self.follow[1]:
                w = hw[1] * w // self.follow[1]
        if self.kind == "select":
            c = -1
        elif self.kind == "other":
            h = -1
        return g.reshape(batch, c, h, w)


@dataclass(frozen=True)
class BlockSpec:
    """A block found by `discover_blocks`.

    Attributes:
        name: module name as in `named_modules()`.
        type: class name.
        kind: block family from its masks.
        masks: mask names in the order the block computed them.
        identity_path: the block keeps part of its input unscaled (its output is not a product
            of masks, or a mask is blended with a constant).
        feature: [C, H, W] of its input.
        forced: named by `--blocks` although the automatic search did not select it.
        mask_gates: for each mask, which gate output of the block's call it is (0 = the first
            gate the call computes), so a mask can be replaced in later passes (`Replace`).
        sites: for each mask, how it is read (`MaskSite`).
        input_arg: which argument is the block input: a position, or a keyword (Attention
            U-Net's `att(g=..., x=...)`): the one the masks weight when it is an argument.
    """

    name: str
    type: str
    kind: str
    masks: tuple[str, ...]
    identity_path: bool
    feature: tuple[int, ...]
    forced: bool = False
    mask_gates: tuple[int, ...] = ()
    sites: tuple[MaskSite, ...] = ()
    input_arg: int | str = 0

    @property
    def parts(self) -> tuple[str, ...]:
        """For each mask, the child of the block it comes from ('' for the block itself)."""
        return tuple(s.part for s in self.sites)

    @property
    def hooked(self) -> bool:
        """Every mask is read by a forward hook on its gate module: no tracer in this block."""
        return bool(self.sites) and all(s.gate_module is not None for s in self.sites)


#: Called with (block name, n-th gate output of the block's call, the gate output); a tensor it
#: returns replaces the gate output in the forward pass (mask ablation), None keeps it.
Replace = Callable[[str, int, torch.Tensor], "torch.Tensor | None"]


def _mask_names(kinds: list[str]) -> tuple[str, ...]:
    """Unique names: a second mask of the same kind is `a_h#2`, and so on."""
    seen: dict[str, int] = {}
    names = []
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
        names.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
    return tuple(names)


def _input_of(args: tuple[Any, ...], kwargs: dict[str, Any], key: int | str) -> torch.Tensor | None:
    if isinstance(key, str):
        t = kwargs.get(key)
        return t if isinstance(t, torch.Tensor) else _first_tensor(args, kwargs)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if key < len(tensors):
        return tensors[key]
    return _first_tensor(args, kwargs)


# ---------------------------------------------------------------------------------------------
# Discovery


@dataclass
class _Tag:
    """What a tensor seen during the discovery pass is made of."""

    # gate index -> for each element, its position in that gate's output (-1: not from it);
    # None where the gate was resampled (pooled, interpolated) and positions are not followed
    gates: dict[int, torch.Tensor | None] | None = None
    root: int | None = None  # token of the tensor this one is an elementwise function of
    serial: int = -1  # the oldest mask product on any path into this tensor (-1: none)
    blended: bool = False  # a gate-derived tensor mixed with a nonzero constant


@dataclass(eq=False)
class _Call:
    """One module call of the discovery pass."""

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    first_event: int
    serial0: int
    inputs: dict[int | str, tuple[int, ...]] = field(default_factory=dict)
    gated_out: bool = False
    within: tuple[_Call, ...] = ()  # the calls open when this one began, outermost first
    # kept for the run's statistics (`trace_blocks` with `moments`): the call's tensor inputs
    # while it is open, then, for a call that could be a block (`candidate`), each input's
    # moments (taken before any in-place write to it) and the output's
    held: dict[int | str, torch.Tensor] | None = None
    moments: dict[int | str, torch.Tensor | None] = field(default_factory=dict)
    out_moments: torch.Tensor | None = None
    out_numel: int = 0
    out_dim: int = 0
    # could be a block: it holds a gate and every product of it so far, or a mask weights its
    # input (the two ways `trace_blocks` selects a block)
    candidate: bool = False


@dataclass(eq=False)
class _Use:
    """One product of a gate output with a feature tensor."""

    kind: str
    shape: tuple[int, int, int]
    local: torch.Tensor | None  # per-sample positions in canonical order; None: as laid out
    stack: tuple[_Call, ...]
    blended: bool
    keys: dict[int, int | str]  # id(call) -> which of its arguments the feature tensor is
    arg_of: set[str] = field(default_factory=set)  # modules whose call got the feature tensor
    fhw: tuple[int, int] | None = None  # (H, W) of the feature tensor when it is 4-D


@dataclass(eq=False)
class _GateRec:
    op: str
    shape: tuple[int, ...]
    stack: tuple[_Call, ...]
    event: int
    source: int | None  # root token of the gate's input
    batch_axis: int | None
    activation: bool = False
    uses: list[_Use] = field(default_factory=list)
    #: the innermost module call that computed this gate and returned its output as is (an
    #: nn.Sigmoid, a user's h_sigmoid or gate module); None for a gate computed in a forward
    site: _Call | None = None
    #: the calls holding the gate and every product of it so far (outermost first)
    common: tuple[_Call, ...] | None = None


def _common(a: tuple[_Call, ...], b: tuple[_Call, ...]) -> tuple[_Call, ...]:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x is not y:
            break
        n += 1
    return a[:n]


class _Discovery(TorchFunctionMode):
    """Follows gates, their positions and feature tensors through every torch call of one pass."""

    def __init__(self, batch: int,
                 moments: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.batch = batch
        #: keeping what the run's statistics need (`trace_blocks` with `moments`): gate outputs
        #: by event, up to KEEP_LIMIT bytes; None when not keeping (or no longer)
        self.moments = moments
        self.kept: dict[int, torch.Tensor] | None = {} if moments is not None else None
        self.kept_bytes = 0
        self.quiet = False  # the tracer's own ops (moments) pass untraced
        self.detector = _Gates()
        self.tags: dict[int, tuple[Any, _Tag]] = {}
        self.gates: list[_GateRec] = []
        self.stack: list[_Call] = []
        self.calls: list[_Call] = []
        #: id of each gate output -> (weak reference, index in `gates`): which module returns one
        self.gate_outs: dict[int, tuple[Any, int]] = {}
        self.n_events = 0
        self.serial = 0
        self.next_root = 0
        #: bytes of every new storage a call returned (views and in-place results not counted):
        #: all the pass allocated, an upper bound on what it held at once
        self.allocated = 0

    # -- tags, by identity, without keeping tensors alive
    def get(self, t: Any) -> _Tag | None:
        e = self.tags.get(id(t))
        if e is None or e[0]() is not t:
            return None
        return e[1]

    def put(self, t: torch.Tensor, tag: _Tag) -> None:
        key = id(t)
        tags = self.tags

        def drop(ref: Any, key: int = key) -> None:
            e = tags.get(key)
            if e is not None and e[0] is ref:
                del tags[key]

        tags[key] = (weakref.ref(t, drop), tag)

    def root_of(self, t: torch.Tensor) -> int:
        """A token for the tensor `t` is an elementwise function of (itself when none), stable for
        the whole pass (tensors die and their ids are reused; tokens are not)."""
        tag = self.get(t)
        if tag is not None and tag.root is not None:
            return tag.root
        self.next_root += 1
        if tag is None:
            self.put(t, _Tag(root=self.next_root))
        else:
            tag.root = self.next_root
        return self.next_root

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.quiet:
            return func(*args, **kwargs)
        if self.kept is not None and self.stack:
            self._before_write(func, args, kwargs)
        out = func(*args, **kwargs)
        outs = _tensors_in(out)
        if not outs:
            return out
        arg_t = _tensors_in(args)
        if kwargs:
            arg_t += _tensors_in(list(kwargs.values()))
        self._count(arg_t, outs)
        if self.stack:
            self._follow(func, _op_name(func), args, kwargs, out, arg_t, outs)
        return out

    def take_moments(self, t: torch.Tensor) -> torch.Tensor | None:
        """`moments` of `t`, computed untraced; None below 2 dimensions or for a tensor they do
        not apply to (sparse, complex: the block's std ratio is then left out)."""
        if self.moments is None or t.dim() < 2 or t.is_sparse or t.is_complex():
            return None
        self.quiet = True
        try:
            return self.moments(t)
        except (RuntimeError, NotImplementedError):
            return None
        finally:
            self.quiet = False

    def _before_write(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before an op writes into a tensor in place: the moments of every open call's input
        that shares its storage, as the call got it."""
        if "out" in kwargs:
            targets = _tensors_in(kwargs["out"])
        else:
            name = _op_name(func)
            if not (kwargs.get("inplace") is True or name in _INPLACE_DUNDERS
                    or (name.endswith("_") and not name.startswith("_"))):
                return
            targets = _tensors_in(args[0]) if args else []
        if not targets:
            return
        ptrs = {_storage_ptr(t) for t in targets} - {None}
        for call in self.stack:
            if not call.held:
                continue
            for key, t in call.held.items():
                if key not in call.moments and _storage_ptr(t) in ptrs:
                    call.moments[key] = self.take_moments(t)

    def _keep(self, event: int, g: torch.Tensor) -> None:
        """Keep a gate output for the run's statistics, or stop keeping past KEEP_LIMIT."""
        if self.kept is None:
            return
        size = g.numel() * g.element_size()
        if self.kept_bytes + size > KEEP_LIMIT:
            self.kept = None  # the run reads its first batch again instead
            for call in self.stack:
                call.held = None
            return
        self.kept[event] = g
        self.kept_bytes += size

    def _count(self, arg_t: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        """Add the bytes of each new storage among a call's outputs `outs` (not an argument's,
        `arg_t`: an in-place result or a view of one)."""
        seen = {_storage_ptr(a) for a in arg_t}
        for o in outs:
            try:
                storage = o.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse, nested: no plain storage
                continue
            ptr = storage.data_ptr()
            if ptr and ptr not in seen:
                seen.add(ptr)
                self.allocated += storage.nbytes()

    def _follow(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                out: Any, arg_t: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        ev = self.detector.event(name, args, kwargs, out)
        out0 = outs[0]
        if ev is not None:
            self._gate(ev, out0)
            return
        tags = [self.get(a) for a in arg_t]
        b = self.batch
        if any(t is not None and t.gates is not None for t in tags):
            self._follow_gates(func, name, args, kwargs, arg_t, tags, outs)
            return
        feats = [(a, t) for a, t in zip(arg_t, tags, strict=False) if not _is_batchless(a, b)]
        if not feats:
            return
        serials = [t.serial if t is not None else -1 for _, t in feats]
        serial = max(serials) if name in _MULS else min(serials)
        root = None
        if (name in _ELEMENTWISE or name in _KEEP_IDX) \
                and all(a.shape == out0.shape for a, _ in feats):
            # an elementwise function of one tensor (x + 0.044715 * x ** 3 too): same root
            roots = {self.root_of(a) for a, _ in feats}
            if len(roots) == 1:
                root = roots.pop()
        for o in outs:  # an in-place op on a tagged tensor replaces its tag
            if serial >= 0 or root is not None or self.get(o) is not None:
                self.put(o, _Tag(root=root, serial=serial))

    def _gate(self, op: str, g: torch.Tensor) -> None:
        src = self.detector.source
        axis = _batch_axis(g, self.batch) if g.dim() else None
        rec = _GateRec(op=op, shape=tuple(g.shape), stack=tuple(self.stack), event=self.n_events,
                       source=self.root_of(src) if src is not None else None,
                       batch_axis=axis)
        self.n_events += 1
        index = len(self.gates)
        self.gates.append(rec)
        self.gate_outs[id(g)] = (weakref.ref(g), index)
        if axis is None:  # computed from parameters alone: a constant for every sample
            return
        self._keep(rec.event, g)
        positions = torch.arange(g.numel(), device=g.device).view(g.shape)
        self.put(g, _Tag(gates={index: positions}))

    def _follow_gates(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                      arg_t: list[torch.Tensor], tags: list[_Tag | None],
                      outs: list[torch.Tensor]) -> None:
        out0 = outs[0]
        b = self.batch
        is_gate = [t is not None and t.gates is not None for t in tags]
        if name in _MULS and len(arg_t) == 2:
            (a0, a1), (t0, t1) = arg_t, tags
            if is_gate[0] and is_gate[1]:
                self.put(out0, _Tag(gates=_union([t0, t1], out0.shape),  # type: ignore[list-item]
                                    blended=bool(t0 and t0.blended) or bool(t1 and t1.blended)))
                return
            m, mt, f = (a0, t0, a1) if is_gate[0] else (a1, t1, a0)
            assert mt is not None
            if not _is_batchless(f, b) and out0.shape == f.shape:
                found = self._use(mt, f, out0)
                ft = self.get(f)
                if found == "use":
                    self.serial += 1
                    self.put(out0, _Tag(serial=self.serial))
                elif found == "activation":
                    self.put(out0, _Tag(root=self.root_of(f),
                                        serial=ft.serial if ft is not None else -1))
                return
            if _is_batchless(f, b):
                self.put(out0, _Tag(gates=_union([mt], out0.shape), blended=mt.blended))
            return
        first = tags[0] if arg_t and args and arg_t[0] is args[0] else None
        if name in _SHAPE_OPS and first is not None and first.gates is not None:
            if name in _KEEP_IDX:
                for o in outs:
                    self.put(o, _Tag(gates=dict(first.gates), blended=first.blended))
                return
            per_out: list[dict[int, torch.Tensor | None]] = [{} for _ in outs]
            for gi, pos in first.gates.items():
                if pos is None:
                    for d in per_out:
                        d[gi] = None
                    continue
                try:
                    moved = _tensors_in(func(pos, *args[1:], **kwargs))
                except Exception:  # an index op the positions cannot follow: drop the gate
                    continue
                if len(moved) != len(outs):
                    continue
                for d, r, o in zip(per_out, moved, outs, strict=True):
                    if r.shape == o.shape:
                        d[gi] = r
            for d, o in zip(per_out, outs, strict=True):
                if d:
                    self.put(o, _Tag(gates=d, blended=first.blended))
            return
        if name in _JOIN and args and isinstance(args[0], (list, tuple)):
            parts = [p for p in args[0] if isinstance(p, torch.Tensor)]
            ptags = [self.get(p) for p in parts]
            if parts and all(t is not None and t.gates is not None for t in ptags):
                ids = {gi for t in ptags for gi in (t.gates or {})}  # type: ignore[union-attr]
                joined: dict[int, torch.Tensor | None] = {}
                for gi in ids:
                    pieces = []
                    for p, t in zip(parts, ptags, strict=True):
                        held = (t.gates or {}) if t is not None else {}
                        if gi in held and held[gi] is None:
                            break
                        pos = held.get(gi)
                        pieces.append(pos if pos is not None else torch.full(
                            p.shape, -1, dtype=torch.int64, device=p.device))
                    else:
                        try:
                            joined[gi] = func(pieces, *args[1:], **kwargs)
                        except Exception:
                            continue
                if joined:
                    self.put(out0, _Tag(gates=joined, blended=any(t.blended for t in ptags
                                                                   if t is not None)))
            return
        if name in _RESAMPLE and first is not None and first.gates is not None:
            self.put(out0, _Tag(gates={gi: None for gi in first.gates}, blended=first.blended))
            return
        if name in _SCALE_OPS or name in _ELEMENTWISE:
            ok = all(g or _is_batchless(a, b) for a, g in zip(arg_t, is_gate, strict=True))
            if ok:
                gtags = [t for t, g in zip(tags, is_gate, strict=True) if g]
                blended = any(t.blended for t in gtags if t is not None)
                if name in _ADDS:
                    blended = blended or _adds_constant(args, kwargs, is_gate, arg_t)
                union = _union(gtags, out0.shape)  # type: ignore[arg-type]
                if union:
                    self.put(out0, _Tag(gates=union, blended=blended))

    def _use(self, mt: _Tag, f: torch.Tensor, out: torch.Tensor) -> str | None:
        """Record the product of gate-derived `mt` with feature `f`: a use, an activation or None."""
        froot = self.root_of(f)
        result = None
        for gi, pos in (mt.gates or {}).items():
            rec = self.gates[gi]
            if rec.source is not None and rec.source == froot:
                rec.activation = True
                result = result or "activation"
                continue
            use = self._site(rec, pos, f, out)
            if use is None:
                continue
            use.blended = mt.blended
            rec.uses.append(use)
            result = "use"
            if self.kept is not None:  # the calls that could be blocks, for their moments
                rec.common = _common(rec.stack if rec.common is None else rec.common, use.stack)
                if rec.common:
                    rec.common[-1].candidate = True
                for call in use.stack:
                    if id(call) in use.keys:
                        call.candidate = True
        return result

    def _site(self, rec: _GateRec, pos: torch.Tensor | None, f: torch.Tensor,
              out: torch.Tensor) -> _Use | None:
        """Kind and canonical layout of one gate against the feature tensor it multiplies."""
        b = self.batch
        fb = _batch_axis(f, b)
        gb = rec.batch_axis
        if fb is None or gb is None:
            return None
        nd = out.dim()
        numel = math.prod(rec.shape)
        if numel % b:
            return None
        per = numel // b
        if pos is None:  # resampled: the gate's own shape, in the feature's layout
            if len(rec.shape) != nd or gb != fb:
                return None
            e_shape = list(rec.shape)
            e_shape.insert(0, e_shape.pop(fb))
            varying = {ax for ax in range(1, nd) if e_shape[ax] > 1}
            e_c = None
            groups = e_shape[0] // b
        else:
            # the positions as they broadcast against the product, looked at in their own
            # (smaller) shape: along an axis where they have size 1 they do not vary
            # (not torch.broadcast_shapes, which imports the compiler's symbolic shapes)
            if pos.dim() > nd or any(p not in (1, o) for p, o in zip(
                    reversed(pos.shape), reversed(out.shape), strict=False)):
                return None
            e = pos.reshape((1,) * (nd - pos.dim()) + tuple(pos.shape))
            if fb:
                e = e.movedim(fb, 0)
            if bool((e < 0).any()):
                return None
            if b > 1 and out.shape[fb] > 1 and (e.shape[0] == 1 or not bool(
                    (e.narrow(0, 0, 1) != e).any())):
                return None  # the same weights for every sample
            varying = {ax for ax in range(1, nd)
                       if e.shape[ax] > 1 and bool((e.narrow(ax, 0, 1) != e).any())}
            for ax in range(1, nd):
                if ax not in varying and e.shape[ax] > 1:
                    e = e.narrow(ax, 0, 1)
            e = e.expand(out.shape[fb], *e.shape[1:])
            e_c = e
            e_shape = list(e.shape)
            groups = e_shape[0] // b
        kind, shape, order = _layout(nd, varying, e_shape, groups)
        local: torch.Tensor | None = None
        if e_c is not None:
            lay = order(e_c)
            if gb:
                perm = torch.arange(numel, device=lay.device).view(rec.shape).movedim(gb, 0)
                inv = torch.empty(numel, dtype=torch.int64, device=lay.device)
                inv[perm.reshape(-1)] = torch.arange(numel, device=lay.device)
                lay = inv[lay]
            rows = lay.reshape(b, -1)
            steps = torch.arange(b, device=rows.device).unsqueeze(1) * per
            if not torch.equal(rows, rows[:1] + steps):
                return None
            local = rows[0].clone()
            if local.numel() == per and torch.equal(local, torch.arange(per, device=local.device)):
                local = None
        elif math.prod(shape) != per:
            return None
        keys: dict[int, int | str] = {}
        arg_of: set[str] = set()
        for call in self.stack:
            key = _arg_key(call, f)
            if key is not None:
                keys[id(call)] = key
                arg_of.add(call.name)
        fhw = (int(out.shape[-2]), int(out.shape[-1])) if nd == 4 and fb == 0 else None
        return _Use(kind=kind, shape=shape, local=local, stack=tuple(self.stack), blended=False,
                    keys=keys, fhw=fhw, arg_of=arg_of)


def _arg_key(call: _Call, t: torch.Tensor) -> int | str | None:
    n = 0
    for a in call.args:
        if isinstance(a, torch.Tensor):
            if a is t:
                return n
            n += 1
    for k, v in call.kwargs.items():
        if v is t:
            return k
    return None


def _layout(nd: int, varying: set[int], e_shape: list[int], groups: int
            ) -> tuple[str, tuple[int, int, int], Callable[[torch.Tensor], torch.Tensor]]:
    """A mask's kind, canonical per-sample shape and how positions are laid out canonically.

    `e_shape` is the mask's shape in the feature's layout, batch axis first, size 1 along the
    axes it does not vary on; `groups` is how many groups the batch axis holds per sample.
    """
    if nd == 5 and 1 in varying:  # (B, M, C, H, W): weights across branches
        m = e_shape[1]
        rest = math.prod(e_shape[2:]) * groups
        return "select", (rest, m, 1), lambda e: e.movedim(1, -1).reshape(e.shape[0] // groups,
                                                                            rest, m, 1)
    if nd == 5:  # branches not weighted differently: (B, M*C, H, W)
        e_shape = [e_shape[0], e_shape[1] * e_shape[2], e_shape[3], e_shape[4]]
        varying = {1 if ax in (1, 2) else ax - 1 for ax in varying}
        nd = 4
    if nd == 4:
        c, h, w = e_shape[1] * groups, e_shape[2], e_shape[3]
        kinds = {frozenset({1, 2}): "a_h", frozenset({1, 3}): "a_w",
                 frozenset({1, 2, 3}): "a_hw", frozenset({1}): "channel",
                 frozenset({2, 3}): "spatial"}
        kind = kinds.get(frozenset(varying))
        if kind is not None:
            return kind, (c, h, w), lambda e: e.reshape(e.shape[0] // groups, c, h, w)
    n = math.prod(e_shape[1:]) * groups
    return "other", (1, n, 1), lambda e: e.reshape(e.shape[0] // groups, 1, n, 1)


def _union(tags: list[_Tag], shape: torch.Size) -> dict[int, torch.Tensor | None]:
    union: dict[int, torch.Tensor | None] = {}
    for t in tags:
        for gi, pos in (t.gates or {}).items():
            if pos is None:
                union[gi] = None
                continue
            try:
                union[gi] = pos.broadcast_to(shape)
            except RuntimeError:
                continue
    return union


def _adds_constant(args: tuple[Any, ...], kwargs: dict[str, Any], is_gate: list[bool],
                   arg_t: list[torch.Tensor]) -> bool:
    """Whether an add/sub mixes a gate-derived tensor with a nonzero constant."""
    gate_ids = {id(a) for a, g in zip(arg_t, is_gate, strict=True) if g}
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            if id(a) in gate_ids:
                continue
            # discovery may read a one-element tensor (1 - alpha); anything else counts as nonzero
            if a.numel() == 1 and float(a.detach().reshape(()).item()) == 0.0:
                continue
            return True
        v = _number(a)
        if v is not None and v != 0.0:
            return True
    return False


class _DiscoveryHooks:
    """Opens a call record for every module call during the discovery pass."""

    def __init__(self, model: nn.Module, tracer: _Discovery) -> None:
        self.tracer = tracer
        self.names = {m: n for n, m in model.named_modules()}
        # torch.nn's own leaf layers (a convolution, an nn.Sigmoid) are never blocks: their
        # inputs are not kept for the run's statistics
        self.leaves = {m for m in self.names if type(m).__module__.startswith("torch.nn.")
                       and next(m.children(), None) is None}
        self.handles: list[Any] = []
        for module in self.names:
            self.handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post, with_kwargs=True,
                                                             always_call=True))

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = self.tracer
        call = _Call(self.names[module], module, args, dict(kwargs), t.n_events, t.serial + 1)
        # the tensor inputs by position among the tensors, or keyword (`_input_of`'s keys)
        held: dict[int | str, torch.Tensor] = dict(enumerate(
            a for a in args if isinstance(a, torch.Tensor)))
        held.update((k, v) for k, v in kwargs.items() if isinstance(v, torch.Tensor))
        if not held:
            first = _first_tensor(args, kwargs)
            if first is not None:
                held[0] = first
        call.inputs = {k: tuple(v.shape) for k, v in held.items()}
        if t.kept is not None and module not in self.leaves:
            call.held = held
        call.within = tuple(t.stack)
        t.stack.append(call)
        t.calls.append(call)

    def _post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
              output: Any) -> None:
        stack = self.tracer.stack
        if not stack or stack[-1].module is not module:
            return
        call = stack.pop()
        if isinstance(output, torch.Tensor):
            # a module returning a gate output it computed itself: the gate's site
            known = self.tracer.gate_outs.get(id(output))
            if known is not None and known[0]() is output:
                rec = self.tracer.gates[known[1]]
                if rec.site is None and any(c is call for c in rec.stack):
                    rec.site = call
        out = _first_tensor((output,))
        tag = self.tracer.get(out) if out is not None else None
        call.gated_out = tag is not None and tag.serial >= call.serial0
        call.args, call.kwargs = (), {}
        held, call.held = call.held, None
        if held is not None and self.tracer.kept is not None and call.candidate:
            # a call that could be a block: its std ratio's moments
            for key, a in held.items():
                if key not in call.moments:
                    call.moments[key] = self.tracer.take_moments(a)
            if out is not None:
                call.out_dim = out.dim()
                if out.dim() >= 2:
                    call.out_moments = self.tracer.take_moments(out)
                    call.out_numel = out[0].numel()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _discovery_sample(sample: torch.Tensor) -> torch.Tensor:
    b = sample.shape[0] if sample.dim() else 0
    if b == DISCOVERY_BATCH or b == 0:
        return sample
    if b > DISCOVERY_BATCH:
        return sample[:DISCOVERY_BATCH]
    reps = -(-DISCOVERY_BATCH // b)
    return sample.repeat(reps, *([1] * (sample.dim() - 1)))[:DISCOVERY_BATCH]


@dataclass
class _Mask:
    rec: _GateRec
    kind: str
    shape: tuple[int, int, int]
    local: torch.Tensor | None
    blended: bool
    uses: list[_Use]


def _mask_of(rec: _GateRec) -> _Mask:
    """One gate's mask from its uses: one layout, or `select` when its slices weight different
    tensors (LSK's sig[:, 0] and sig[:, 1])."""
    distinct: list[_Use] = []
    for u in rec.uses:
        same = any(d.kind == u.kind and d.shape == u.shape and (
            (d.local is None and u.local is None)
            or (d.local is not None and u.local is not None and torch.equal(d.local, u.local)))
            for d in distinct)
        if not same:
            distinct.append(u)
    first = distinct[0]
    blended = any(u.blended for u in rec.uses)
    if len(distinct) > 1 and all(d.shape == first.shape for d in distinct):
        n = math.prod(first.shape)
        per = math.prod(rec.shape) // DISCOVERY_BATCH
        locs = [d.local if d.local is not None else torch.arange(per) for d in distinct]
        flat = torch.cat([loc.reshape(-1).cpu() for loc in locs])
        if flat.numel() == flat.unique().numel() and all(loc.numel() == n for loc in locs):
            stacked = torch.stack([loc.reshape(-1).cpu() for loc in locs], dim=-1).reshape(-1)
            return _Mask(rec, "select", (n, len(distinct), 1), stacked, blended, rec.uses)
    return _Mask(rec, first.kind, first.shape, first.local, blended, rec.uses)


@dataclass(frozen=True)
class FirstCall:
    """One block's call in a traced pass, kept for the run's statistics: what a `BlockCall`
    hands over, with the input's moments taken before the block could change it.

    Attributes:
        masks: mask name -> mask in canonical layout, as the gates computed them.
        x_moments / out_moments: the input's and output's per-sample moments (the function
            given to `trace_blocks`), None below two dimensions.
        x_numel / out_numel: values per sample of the input and the output.
    """

    masks: dict[str, torch.Tensor]
    x_moments: torch.Tensor | None
    x_numel: int
    out_moments: torch.Tensor | None
    out_numel: int


@dataclass(frozen=True)
class Traced:
    """What one traced pass found: the blocks, and the bytes of every storage its calls created
    (`allocated`, over `samples` samples): an upper bound on the activation memory it needed.
    With `moments`, `first` holds each block's call in the pass (None when the pass could not
    keep them all: see `trace_blocks`)."""

    blocks: list[BlockSpec]
    allocated: int
    samples: int
    first: dict[str, FirstCall] | None = field(default=None, repr=False, compare=False)


def discover_blocks(
    model: nn.Module,
    sample: torch.Tensor,
    pattern: str | None = None,
) -> list[BlockSpec]:
    """Find the attention blocks of `model` with one traced forward pass on `sample`
    (`trace_blocks(...).blocks`)."""
    return trace_blocks(model, sample, pattern).blocks


def trace_blocks(
    model: nn.Module,
    sample: torch.Tensor,
    pattern: str | None = None,
    moments: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Traced:
    """Find the attention blocks of `model` with one traced forward pass on `sample`.

    The pass runs on `DISCOVERY_BATCH` samples (the given ones, repeated or cut).

    With `moments` (a function of a tensor, e.g. the std ratio's per-sample moments), the pass
    also keeps what the run's statistics need from it, so that a run that traces its first
    batch's first samples need not run them again: each gate output (up to KEEP_LIMIT bytes in
    all), and for each module call that could be a block (one holding a gate and every product
    of it, or one whose input a mask weights; not torch.nn's own leaf layers), the moments of
    its inputs (taken before any in-place write to them) and of its output. `Traced.first`
    then holds each block's call; it is None when the pass kept too much, a block ran more than
    once, a mask could not be read, or a block's moments were not taken.

    Args:
        model: the model (put in eval mode by the caller; its flags are not changed here).
        sample: a small input batch.
        pattern: a regular expression; when given, only blocks whose name matches are kept, and a
            matching module that the automatic search did not select but that computes gate
            outputs shaped like masks is watched too (its gate outputs are its masks).
        moments: see above.

    Returns:
        The blocks in model order (possibly empty), and what the pass allocated.
    """
    regex = re.compile(pattern) if pattern else None
    batch_sample = _discovery_sample(sample)
    tracer = _Discovery(int(batch_sample.shape[0]) if batch_sample.dim() else 1, moments)
    hooks = _DiscoveryHooks(model, tracer)
    try:
        with tracer:
            model(batch_sample)
    finally:
        hooks.remove()
        for call in tracer.stack:
            call.held = None
        tracer.stack.clear()
        tracer.tags.clear()
        tracer.gate_outs.clear()
        tracer.detector.pending.clear()
    try:
        return _traced(tracer, model, regex, batch_sample)
    finally:
        tracer.kept = None


def _traced(tracer: _Discovery, model: nn.Module, regex: re.Pattern[str] | None,
            batch_sample: torch.Tensor) -> Traced:
    """The blocks a finished pass found (`trace_blocks`)."""
    modules = dict(model.named_modules(remove_duplicate=False))

    # each mask belongs to the smallest call holding its gate and every product it drives
    owned: dict[int, list[_Mask]] = {}
    call_of: dict[int, _Call] = {}
    for rec in tracer.gates:
        if not rec.uses:
            continue
        common = rec.stack
        for u in rec.uses:
            common = _common(common, u.stack)
        if not common:
            continue
        call = common[-1]
        owned.setdefault(id(call), []).append(_mask_of(rec))
        call_of[id(call)] = call
    first_call: dict[str, _Call] = {}  # a module called more than once: its first masked call
    for call in sorted(call_of.values(), key=lambda c: c.first_event):
        first_call.setdefault(call.name, call)
    direct = {name: owned[id(call)] for name, call in first_call.items()}

    # every module holding a directly masked call: the names and all their parents
    holding = {""}
    for n in direct:
        parts = n.split(".")
        holding.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))

    def in_subtree(name: str) -> bool:
        return name in holding

    def has_params(name: str) -> bool:
        return any(True for _ in modules[name].parameters())

    def weights_input(name: str) -> bool:
        return any(name in u.arg_of for n, ms in direct.items() if _within(n, name)
                   for m in ms for u in m.uses)

    chosen: list[str] = []

    def select(name: str) -> None:
        if not in_subtree(name):
            return
        children = [(f"{name}.{c}" if name else c) for c, _ in modules[name].named_children()]
        masked = [c for c in children if in_subtree(c)]
        plain = [c for c in children if not in_subtree(c) and has_params(c)]
        # a parent of attention children and parameter-free glue (CBAM = channel gate then
        # spatial gate) is one block when a mask weights the parent's own input; a stage whose
        # children's masks weight their own conv outputs (a ResNet layer) is not
        if name in direct or (masked and not plain and weights_input(name)):
            chosen.append(name)
            return
        for c in children:
            select(c)

    select("")
    found = [_spec(name, modules[name], first_call, direct, tracer.calls) for name in chosen]
    specs = [s for s in found if s is not None and (regex is None or regex.search(s.name))]
    if regex is not None:
        specs.extend(_forced(regex, specs, tracer, modules))
        order = {n: i for i, n in enumerate(modules)}
        specs.sort(key=lambda s: order.get(s.name, 0))
    first = _first_calls(specs, tracer, modules) if tracer.kept is not None else None
    return Traced(blocks=specs, allocated=tracer.allocated,
                  samples=int(batch_sample.shape[0]) if batch_sample.dim() else 1, first=first)


def _first_calls(specs: list[BlockSpec], tracer: _Discovery,
                 modules: dict[str, nn.Module]) -> dict[str, FirstCall] | None:
    """Each block's call in the pass, its masks read as `MaskCapture` reads them; None unless
    every block ran exactly once and every mask is there."""
    kept = tracer.kept
    if kept is None:
        return None
    first: dict[str, FirstCall] = {}
    for spec in specs:
        module = modules.get(spec.name)
        calls = [c for c in tracer.calls if c.module is module]
        if len(calls) != 1:
            return None
        call = calls[0]
        if not call.inputs:
            return None
        key = spec.input_arg if spec.input_arg in call.inputs else next(iter(call.inputs))
        shape = call.inputs[key]
        batch = int(shape[0]) if shape else 1
        hw = (int(shape[-2]), int(shape[-1])) if len(shape) == 4 else None
        masks: dict[str, torch.Tensor] = {}
        for name, site in zip(spec.masks, spec.sites, strict=True):
            gate = kept.get(call.first_event + site.gate)
            if gate is None:
                return None
            index = None if site.index is None else site.index.to(gate.device)
            try:
                masks[name] = site.read(gate, batch, hw, index)
            except RuntimeError:
                return None
        x_moments = call.moments.get(key)
        if len(shape) >= 2 and call.out_dim >= 2 and (x_moments is None
                                                      or call.out_moments is None):
            return None  # a std ratio the pass did not take
        first[spec.name] = FirstCall(
            masks=masks, x_moments=x_moments, x_numel=math.prod(shape[1:]),
            out_moments=call.out_moments, out_numel=call.out_numel)
    return first


def _within(name: str, parent: str) -> bool:
    return parent == "" or name == parent or name.startswith(parent + ".")


def _relative(name: str, block: str) -> str:
    if name == block:
        return ""
    return name[len(block) + 1:] if block else name


def _gate_module(block: nn.Module, call: _Call, rec: _GateRec,
                 calls: list[_Call]) -> tuple[str | None, int]:
    """Where a hook can read the gate: the path (relative to the block) of the module whose output
    is the gate output, and which of that module's calls inside the block's call it is; (None, 0)
    for a gate computed inside a forward (read by the tracer)."""
    site = rec.site
    if site is None:
        return None, 0
    depth = next((i for i, c in enumerate(rec.stack) if c is call), None)
    if depth is None or not any(c is site for c in rec.stack[depth + 1:]):
        return None, 0
    path = next((p for p, m in block.named_modules(remove_duplicate=False)
                 if m is site.module and p), None)
    if path is None:
        return None, 0
    ordinal = 0
    for c in calls:
        if c is site:
            return path, ordinal
        if c.module is site.module and any(o is call for o in c.within):
            ordinal += 1
    return None, 0


def _spec(name: str, module: nn.Module, first_call: dict[str, _Call],
          direct: dict[str, list[_Mask]], all_calls: list[_Call]) -> BlockSpec | None:
    # the block's call: the first call of the module that holds any of its masks
    masks = [m for n, ms in direct.items() if _within(n, name) for m in ms]
    calls = [c for m in masks for c in m.rec.stack if c.name == name]
    if not calls:
        return None
    call = min(calls, key=lambda c: c.first_event)
    mine = sorted((m for m in masks if any(c is call for c in m.rec.stack)),
                  key=lambda m: m.rec.event)
    if not mine:
        return None
    key: int | str = 0
    for m in mine:
        for u in m.uses:
            if id(call) in u.keys:
                key = u.keys[id(call)]
                break
        else:
            continue
        break
    in_shape = call.inputs.get(key) or next(iter(call.inputs.values()), ())
    hw = (int(in_shape[-2]), int(in_shape[-1])) if len(in_shape) == 4 else (0, 0)
    sites: list[MaskSite] = []
    for m in mine:
        depth = next(i for i, c in enumerate(m.rec.stack) if c is call)
        below = m.rec.stack[depth + 1] if depth + 1 < len(m.rec.stack) else None
        # the child the gate comes from; a bare nn.Sigmoid (or other torch.nn layer) of the
        # block itself is no part
        part = ""
        if below is not None and (depth + 2 < len(m.rec.stack)
                                  or not type(below.module).__module__.startswith("torch.nn")):
            part = _relative(below.name, name)
        fhw = m.uses[0].fhw
        follow = (0, 0)
        if m.local is None and fhw is not None and hw != (0, 0):
            fh = hw[0] if m.kind in ("a_h", "a_hw", "spatial") and m.shape[1] == fhw[0] \
                and m.shape[1] > 1 else 0
            fw = hw[1] if m.kind in ("a_w", "a_hw", "spatial") and m.shape[2] == fhw[1] \
                and m.shape[2] > 1 else 0
            follow = (fh, fw)
        gate_module, gate_call = _gate_module(module, call, m.rec, all_calls)
        sites.append(MaskSite(
            kind=m.kind, op=m.rec.op, gate=m.rec.event - call.first_event, part=part,
            batch_axis=m.rec.batch_axis or 0, shape=m.shape, index=m.local, follow=follow,
            gate_module=gate_module, gate_call=gate_call))
    kinds = [s.kind for s in sites]
    return BlockSpec(
        name=name,
        type=type(module).__name__,
        kind=block_kind(kinds),
        masks=_mask_names(kinds),
        identity_path=any(m.blended for m in mine) or not call.gated_out,
        feature=tuple(int(s) for s in in_shape[1:]) if len(in_shape) == 4 else tuple(
            int(s) for s in in_shape[1:]),
        mask_gates=tuple(s.gate for s in sites),
        sites=tuple(sites),
        input_arg=key,
    )


def _forced(regex: re.Pattern[str], specs: list[BlockSpec], tracer: _Discovery,
            modules: dict[str, nn.Module]) -> list[BlockSpec]:
    """Modules named by `--blocks` that the search did not select: their gate outputs, named by
    their own shape against the module's input, are their masks."""
    taken = [s.name for s in specs]
    extra: list[BlockSpec] = []
    for name, module in modules.items():
        if not regex.search(name) or name in taken:
            continue
        if any(_within(name, t) or _within(t, name) for t in taken):
            continue
        calls = [c for c in tracer.calls if c.module is module]
        if not calls:
            continue
        call = calls[0]
        in_shape = call.inputs.get(0) or next(iter(call.inputs.values()), ())
        if len(in_shape) != 4:
            continue
        x_shape = torch.Size(in_shape)
        sites: list[MaskSite] = []
        for rec in tracer.gates:
            if rec.activation or not any(c is call for c in rec.stack):
                continue
            kind = classify_mask(torch.Size(rec.shape), False, x_shape)
            if kind is None:
                continue
            shape = _canonical_shape(kind, x_shape)
            follow = (in_shape[2] if kind in ("a_h", "a_hw", "spatial") and in_shape[2] > 1 else 0,
                      in_shape[3] if kind in ("a_w", "a_hw", "spatial") and in_shape[3] > 1 else 0)
            sites.append(MaskSite(kind=kind, op=rec.op, gate=rec.event - call.first_event,
                                  shape=shape, follow=follow))
        if not sites:
            continue
        kinds = [s.kind for s in sites]
        extra.append(BlockSpec(
            name=name, type=type(module).__name__, kind=block_kind(kinds),
            masks=_mask_names(kinds), identity_path=False,
            feature=tuple(int(s) for s in in_shape[1:]), forced=True,
            mask_gates=tuple(s.gate for s in sites), sites=tuple(sites)))
        taken.append(name)
    return extra


# ---------------------------------------------------------------------------------------------
# Watching blocks batch after batch


@dataclass
class BlockCall:
    """What one block did in one forward pass, handed to the capture callback.

    Attributes:
        spec: the block.
        x: its input (as it is after the block ran: a block may change it in place).
        out: its output (first tensor of a tuple output).
        masks: mask name -> mask in canonical layout (`MaskSite.read`).
        entered: what `on_enter` returned for this call, taken before the block ran.
    """

    spec: BlockSpec
    x: torch.Tensor
    out: torch.Tensor | None
    masks: dict[str, torch.Tensor]
    entered: Any = None


@dataclass
class _Frame:
    """One call of one watched block."""

    spec: BlockSpec
    module: nn.Module
    x: torch.Tensor | None
    wanted: frozenset[int]
    seen: dict[int, torch.Tensor] = field(default_factory=dict)
    n_gates: int = 0
    entered: Any = None
    #: hooked blocks: id(gate module) -> {its n-th call in this block call: gate ordinal}
    gates: dict[int, dict[int, int]] | None = None
    calls: dict[int, int] = field(default_factory=dict)  # id(gate module) -> calls so far


class _Watch(TorchFunctionMode):
    """Inside watched blocks: counts gate calls, keeps the ones that are masks, replaces some."""

    def __init__(self, replace: Replace | None) -> None:
        super().__init__()
        self.frames: list[_Frame] = []
        self.detector = _Gates()
        self.replace = replace

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if not self.frames:
            return out
        name = _op_name(func)
        if name not in _EVENT_OPS:
            return out
        if self.detector.event(name, args, kwargs or {}, out) is None:
            return out
        frame = self.frames[-1]
        n = frame.n_gates
        frame.n_gates += 1
        if self.replace is not None and isinstance(out, torch.Tensor):
            swapped = self.replace(frame.spec.name, n, out)
            if swapped is not None:
                out = swapped
        if n in frame.wanted and isinstance(out, torch.Tensor):
            frame.seen[n] = out
        return out


class MaskCapture:
    """Watch the given blocks: a context manager that owns every hook.

    On entry it registers a forward pre-hook and a forward hook on each block and, for blocks
    whose gates are module outputs (`BlockSpec.hooked`: an nn.Sigmoid, a hard-sigmoid or gate
    module, named at discovery), one forward hook on each such gate module, which keeps its
    output when it is the n-th call discovery named (and hands it to `replace`, whose tensor the
    hook returns in its place). Only a block whose gates are computed inside a forward
    (`torch.sigmoid`, `.sigmoid()`, `F.hardsigmoid`) switches the gate counter (a
    TorchFunctionMode) on in its pre-hook and off in its hook, so layers outside it run at full
    speed. The masks are the gate outputs discovery named, read as the gate computed them. The
    block's hook hands its masks to `on_block`. On exit, whatever happened, every hook is removed,
    the counter is off and each module's train/eval flag is what it was on entry.

    With `replace`, a tracer block asks it about every gate of the call, a hooked block about
    its masks' gates.

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
        self.replace = replace
        self._handles: list[Any] = []
        self._training: dict[nn.Module, bool] = {}
        self._watch = _Watch(replace)
        self._frames: list[_Frame] = []  # every open block call, the tracer's ones included
        self._active = False
        self._index: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.missing: list[str] = []  # blocks whose masks were not seen in some call

    def __enter__(self) -> MaskCapture:
        self._training = {m: m.training for m in self.model.modules()}
        try:
            if self.eval_mode:
                self.model.eval()
            modules = dict(self.model.named_modules(remove_duplicate=False))
            gate_modules: dict[int, nn.Module] = {}
            for spec in self.blocks:
                module = modules[spec.name]
                gates = self._gate_sites(spec, module)
                if gates is not None:
                    for m in gates.values():
                        gate_modules[id(m[0])] = m[0]
                self._handles.append(module.register_forward_pre_hook(
                    self._make_pre(spec, module, gates), with_kwargs=True))
                self._handles.append(module.register_forward_hook(
                    self._make_post(spec, module), always_call=True))
            for gate in gate_modules.values():
                self._handles.append(gate.register_forward_hook(self._make_gate(gate)))
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    @property
    def hook_count(self) -> int:
        """How many hooks this capture holds (0 once it has exited)."""
        return len(self._handles)

    @staticmethod
    def _gate_sites(spec: BlockSpec, block: nn.Module
                    ) -> dict[int, tuple[nn.Module, dict[int, int]]] | None:
        """id(gate module) -> (the module, {n-th call in a block call: gate ordinal}) when every
        mask of the block is a gate module's output; None when the tracer must count gates."""
        if not spec.hooked:
            return None
        inner = dict(block.named_modules(remove_duplicate=False))
        gates: dict[int, tuple[nn.Module, dict[int, int]]] = {}
        for site in spec.sites:
            module = inner.get(site.gate_module or "")
            if module is None or not site.gate_module:
                return None
            gates.setdefault(id(module), (module, {}))[1][site.gate_call] = site.gate
        return gates

    def _release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._switch_off()
        self._watch.frames.clear()
        self._frames.clear()
        self._watch.detector.pending.clear()
        for m, flag in self._training.items():
            m.training = flag

    def _switch_off(self) -> None:
        if self._active:
            self._watch.__exit__(None, None, None)
            self._active = False

    def _make_pre(self, spec: BlockSpec, module: nn.Module,
                  gates: dict[int, tuple[nn.Module, dict[int, int]]] | None
                  ) -> Callable[..., None]:
        wanted = frozenset(spec.mask_gates)
        ordinals = None if gates is None else {k: v[1] for k, v in gates.items()}

        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = _input_of(args, kwargs, spec.input_arg)
            frame = _Frame(spec, module, x, wanted, gates=ordinals)
            if x is not None and self.on_enter is not None and x.dim() == 4:
                frame.entered = self.on_enter(spec, x)
            self._frames.append(frame)
            if ordinals is None:
                self._watch.frames.append(frame)
                if not self._active:
                    self._watch.__enter__()
                    self._active = True
        return pre

    def _make_post(self, spec: BlockSpec, module: nn.Module) -> Callable[..., None]:
        def post(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            frames = self._frames
            if not frames or frames[-1].module is not module:
                return
            frame = frames.pop()
            traced = self._watch.frames
            if traced and traced[-1] is frame:
                traced.pop()
                if not traced:
                    self._switch_off()
                    self._watch.detector.pending.clear()
                    self._watch.detector.source = None
            self._emit(spec, frame, output)
        return post

    def _make_gate(self, gate: nn.Module) -> Callable[..., Any]:
        key = id(gate)

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            swapped = None
            for frame in self._frames:  # every open block call this module computes gates for
                if frame.gates is None:
                    continue
                ordinals = frame.gates.get(key)
                if ordinals is None:
                    continue
                k = frame.calls.get(key, 0)
                frame.calls[key] = k + 1
                n = ordinals.get(k)
                if n is None:
                    continue
                out = output if swapped is None else swapped
                if not isinstance(out, torch.Tensor):
                    continue
                if self.replace is not None:
                    new = self.replace(frame.spec.name, n, out)
                    if new is not None:
                        out = swapped = new
                if n in frame.wanted:
                    frame.seen[n] = out
            return swapped
        return hook

    def _emit(self, spec: BlockSpec, frame: _Frame, output: Any) -> None:
        x = frame.x
        if x is None:
            return
        batch = int(x.shape[0]) if x.dim() else 1
        hw = (int(x.shape[-2]), int(x.shape[-1])) if x.dim() == 4 else None
        masks: dict[str, torch.Tensor] = {}
        for name, site in zip(spec.masks, spec.sites, strict=True):
            gate = frame.seen.get(site.gate)
            if gate is None:
                continue
            index = None
            if site.index is not None:
                key = (id(site), gate.device)
                index = self._index.get(key)
                if index is None:
                    index = self._index[key] = site.index.to(gate.device)
            try:
                masks[name] = site.read(gate, batch, hw, index)
            except RuntimeError:  # a layout that does not fit this call's sizes
                continue
        frame.seen.clear()
        if len(masks) != len(spec.masks):
            self.missing.append(spec.name)
        out = _first_tensor((output,))
        self.on_block(BlockCall(spec=spec, x=x, out=out, masks=masks, entered=frame.entered))
