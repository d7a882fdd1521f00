"""What the seed blocks expose besides their masks: alphas, betas, temperature, monitor, router, clamps.

The user's blocks (seed 000 `CoordinateAtt` and its add-ons, seed 001 `ChannelAttentionFusionT`,
`CoordinateAttPlus`, `CBAMChannelPlusCoord`; `../shared/seeds/NOTES.md`) carry their own health
signals. This module reads them for `inspect`, recognising each by its attribute and parameter
names, never by class, so the package's classes (`coordatt_diag.blocks`), the notebook's and a
user's own copy with the same names are all read alike. Each *part* of a block (the block itself
or one of its submodules, by its path relative to the block, "" for the block) reports the
entries it has:

* `alpha` (seed 000 `alpha`; seed 001 block `sigmoid(alpha_raw)`), `alpha_h` / `alpha_w`
  (seed 000 add-on 4 as stored; seed 001 `sigmoid(alpha_h_raw)` / `sigmoid(alpha_w_raw)`),
  `beta` (seed 000 add-on 6, seed 001 Coord) and `beta_ca` (seed 001 CA);
* `T` = `get_T()`, the temperature clamped to [`t_min`, `t_max`], with `T_raw` before the clamp
  and `learnable_temperature` (seed 001 step 2, section 4A);
* `r_ema`, `r_min`, `rescue_mode`, `monitor`, `rescue_ratio` = clamp(r_ema / r_min, 0, 1) and
  `alpha_eff`, the blending weight the seed's rescue gives in training for that `r_ema`
  (`"ratio_floor"`: alpha * clamp(ratio, min_rescue_ratio, 1); `"alpha_floor"`:
  clamp(alpha * ratio, alpha_eff_min, 1); seed 001 step 2, section 4C). At inference the seed
  blends with `alpha`: the rescue acts only in training with `monitor=True`;
* `head_std`: {"a_h", "a_w"} std of the attention heads' weights (`h_attention_head` /
  `w_attention_head`, which seed 001 initialises with std 0.01, or `conv_h` / `conv_w`, which seed
  000 leaves at PyTorch's default init, whose std is `head_init_std` = 1/sqrt(3 fan_in)); a head
  still at its init std has not learned: the "untrained" finding;
* streamed over every batch, on the model's device: `router` (seed 001 CA `fusion_router`,
  `fusion_w = softmax(logits / Tr)`, branch 0 = avg-pooled, 1 = max-pooled descriptor): per
  branch the mean and max share over all samples; `scale_clamp` (seed 001 Coord): the share of
  coordinate-scale values at `scale_min` / `scale_max`.

`MonitorObserver` is the per-batch observer `analysis.RunState` attaches for a run: it owns the
forward hooks on the routers (registered in `attach`, always removed), folds each block call into
mergeable accumulators and adds `extra["monitor"]` = {part: `MonitorPart`} to the block's report.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from coordatt_diag.capture.engine import BlockCall, BlockSpec

_F64 = torch.float64
#: Router outputs kept per router between its call and the block's end (a bound, not a buffer).
_MAX_PENDING = 16
_HEAD_PAIRS = (("h_attention_head", "w_attention_head"), ("conv_h", "conv_w"))


class RouterShares(TypedDict):
    """Router weights over a run: `samples` seen; per branch (0 = avg, 1 = max) `mean`, `max` share."""

    samples: int
    mean: list[float]
    max: list[float]


class ScaleClamp(TypedDict):
    """Coordinate scale values seen (`count`) and the share at `scale_min` / `scale_max`."""

    count: int
    at_min: float
    at_max: float


class MonitorPart(TypedDict, total=False):
    """The monitor entries of one part of a block (only the entries the part has)."""

    type: str
    alpha: float
    alpha_h: float
    alpha_w: float
    beta: float
    beta_ca: float
    T: float
    T_raw: float
    t_min: float
    t_max: float
    learnable_temperature: bool
    router_temperature: float
    router: RouterShares
    r_ema: float
    r_min: float
    rescue_mode: str
    monitor: bool
    rescue_ratio: float
    alpha_eff: float
    scale_min: float
    scale_max: float
    scale_clamp: ScaleClamp
    head_std: dict[str, float]
    head_init_std: float


# ---------------------------------------------------------------------------------------------
# Reading a part's attributes


def _scalar(module: nn.Module, name: str) -> torch.Tensor | None:
    v = getattr(module, name, None)
    return v if isinstance(v, torch.Tensor) and v.numel() == 1 else None


def _number(module: nn.Module, name: str) -> float | None:
    v = getattr(module, name, None)
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach())
    return None


def _heads(module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    for h, w in _HEAD_PAIRS:
        a, b = getattr(module, h, None), getattr(module, w, None)
        if isinstance(a, nn.Module) and isinstance(b, nn.Module) and isinstance(
                getattr(a, "weight", None), torch.Tensor) and isinstance(
                getattr(b, "weight", None), torch.Tensor):
            return a, b
    return None


def _is_channel_part(module: nn.Module) -> bool:
    return isinstance(getattr(module, "fc1", None), nn.Module) and isinstance(
        getattr(module, "fc2", None), nn.Module)


def _router(module: nn.Module) -> nn.Module | None:
    r = getattr(module, "fusion_router", None)
    return r if _is_channel_part(module) and isinstance(r, nn.Module) else None


def _has_rescue(module: nn.Module) -> bool:
    return _scalar(module, "r_ema") is not None and _number(module, "r_min") is not None


def _has_clamp(module: nn.Module) -> bool:
    return (_heads(module) is not None and _number(module, "scale_min") is not None
            and _number(module, "scale_max") is not None
            and _scalar(module, "alpha_h_raw") is not None
            and _scalar(module, "alpha_w_raw") is not None)


def _sigmoid(t: torch.Tensor) -> float:
    return float(torch.sigmoid(t.detach().double()))


def temperature(module: nn.Module) -> tuple[float, float] | None:
    """(T before the clamp, T as `get_T` gives it) of a seed 001 channel attention, else None."""
    if not _is_channel_part(module):
        return None
    t_raw = _scalar(module, "t_raw")
    if getattr(module, "learnable_temperature", False) and t_raw is not None:
        raw = float(F.softplus(t_raw.detach().double())) + (_number(module, "eps") or 0.0)
    else:
        t = _scalar(module, "T")
        if t is None:
            return None
        raw = float(t.detach())
    lo, hi = _number(module, "t_min"), _number(module, "t_max")
    clamped = raw
    if lo is not None:
        clamped = max(clamped, lo)
    if hi is not None:
        clamped = min(clamped, hi)
    return raw, clamped


def rescue(module: nn.Module) -> dict[str, Any] | None:
    """The seed 001 block's monitor state and the `alpha_eff` its rescue gives (section 4C)."""
    if not _has_rescue(module):
        return None
    r_ema = _number(module, "r_ema")
    r_min = _number(module, "r_min")
    assert r_ema is not None and r_min is not None
    alpha_raw = _scalar(module, "alpha_raw")
    residual = bool(getattr(module, "residual", True))
    alpha = _sigmoid(alpha_raw) if residual and alpha_raw is not None else 1.0
    mode = str(getattr(module, "rescue_mode", "ratio_floor"))
    ratio = min(max(r_ema / max(r_min, 1e-12), 0.0), 1.0)
    if mode == "ratio_floor":
        floor = _number(module, "min_rescue_ratio")
        alpha_eff = alpha * min(max(ratio, 0.2 if floor is None else floor), 1.0)
    else:
        floor = _number(module, "alpha_eff_min")
        alpha_eff = min(max(alpha * ratio, 0.2 if floor is None else floor), 1.0)
    out: dict[str, Any] = {"r_ema": r_ema, "r_min": r_min, "rescue_mode": mode,
                           "monitor": bool(getattr(module, "monitor", False)),
                           "rescue_ratio": ratio, "alpha_eff": alpha_eff}
    if residual and alpha_raw is not None:
        out["alpha"] = alpha
    return out


def part_values(module: nn.Module) -> MonitorPart:
    """The entries one module exposes (without the streamed `router` / `scale_clamp`).

    Args:
        module: a block or one of its submodules.

    Returns:
        The entries found, empty when the module exposes none.
    """
    out: dict[str, Any] = {}
    heads = _heads(module)
    if heads is not None:
        raw_h, raw_w = _scalar(module, "alpha_h_raw"), _scalar(module, "alpha_w_raw")
        if raw_h is not None and raw_w is not None:
            out["alpha_h"] = _sigmoid(raw_h)
            out["alpha_w"] = _sigmoid(raw_w)
        elif _scalar(module, "alpha_h") is not None and _scalar(module, "alpha_w") is not None:
            out["alpha_h"] = _number(module, "alpha_h")
            out["alpha_w"] = _number(module, "alpha_w")
        elif _scalar(module, "alpha") is not None:
            out["alpha"] = _number(module, "alpha")
        beta = _number(module, "beta")
        if beta is not None:
            out["beta"] = beta
        if _has_clamp(module):
            out["scale_min"] = _number(module, "scale_min")
            out["scale_max"] = _number(module, "scale_max")
        weights: list[torch.Tensor] = [h.weight for h in heads]  # type: ignore[misc]
        out["head_std"] = {name: float(w.detach().double().std())
                           for name, w in zip(("a_h", "a_w"), weights, strict=True)
                           if w.numel() > 1}
        if getattr(module, "h_attention_head", None) is not heads[0]:
            # seed 000 heads keep PyTorch's default init, kaiming_uniform(a=sqrt(5)):
            # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
            fan_in = weights[0][0].numel()
            out["head_init_std"] = 1.0 / math.sqrt(3.0 * fan_in)
    if _is_channel_part(module):
        beta_ca = _number(module, "beta_ca")
        if beta_ca is not None:
            out["beta_ca"] = beta_ca
        temp = temperature(module)
        if temp is not None:
            out["T_raw"], out["T"] = temp
            for key in ("t_min", "t_max"):
                v = _number(module, key)
                if v is not None:
                    out[key] = v
            out["learnable_temperature"] = bool(getattr(module, "learnable_temperature", False))
        if _router(module) is not None:
            out["router_temperature"] = _number(module, "Tr") or 1.0
    res = rescue(module)
    if res is not None:
        out.update(res)
    if out:
        out = {"type": type(module).__name__, **out}
    return out  # type: ignore[return-value]


def monitor_parts(block: nn.Module) -> dict[str, MonitorPart]:
    """Every part of `block` that exposes monitor entries, by path relative to the block.

    Args:
        block: the attention block.

    Returns:
        {"": the block's own entries, "ca": ..., "coord": ...}, only the parts that have entries.
    """
    parts: dict[str, MonitorPart] = {}
    for name, module in block.named_modules():
        values = part_values(module)
        if values:
            parts[name] = values
    return parts


# ---------------------------------------------------------------------------------------------
# Streamed statistics


class RouterAccumulator:
    """Router shares `fusion_w` (B, K) over a run: per branch the sum and the max, on the device."""

    def __init__(self) -> None:
        self.samples = 0
        self.total: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def update(self, shares: torch.Tensor) -> None:
        """Fold one batch of router weights, shape (B, K)."""
        w = shares.detach().reshape(shares.shape[0], -1)
        total, high = w.sum(dim=0, dtype=_F64), w.amax(dim=0).to(_F64)
        self._add(total, high, int(w.shape[0]))

    def _add(self, total: torch.Tensor, high: torch.Tensor, samples: int) -> None:
        if self.total is None or self.high is None:
            self.total, self.high = total, high
        else:
            self.total = self.total + total.to(self.total.device)
            self.high = torch.maximum(self.high, high.to(self.high.device))
        self.samples += samples

    def merge(self, other: RouterAccumulator) -> None:
        """Combine the batches of `other` into this accumulator."""
        if other.total is not None and other.high is not None:
            self._add(other.total, other.high, other.samples)

    def finalize(self) -> RouterShares | None:
        """Mean and max share of each branch, None when no batch was seen."""
        if self.total is None or self.high is None or self.samples == 0:
            return None
        return RouterShares(samples=self.samples,
                            mean=[float(v) / self.samples for v in self.total.tolist()],
                            max=[float(v) for v in self.high.tolist()])


class ClampAccumulator:
    """Coordinate scale values at the clamp bounds over a run (counts on the device)."""

    def __init__(self) -> None:
        self.count = 0
        self.bounds: torch.Tensor | None = None  # [at scale_min, at scale_max]

    def update(self, scale: torch.Tensor, low: float, high: float) -> None:
        """Fold one batch of the scale *before* the clamp to [low, high]."""
        at = torch.stack([(scale <= low).sum(), (scale >= high).sum()])
        self._add(at, scale.numel())

    def _add(self, at: torch.Tensor, count: int) -> None:
        self.bounds = at if self.bounds is None else self.bounds + at.to(self.bounds.device)
        self.count += count

    def merge(self, other: ClampAccumulator) -> None:
        """Combine the batches of `other` into this accumulator."""
        if other.bounds is not None:
            self._add(other.bounds, other.count)

    def finalize(self) -> ScaleClamp | None:
        """Shares at each bound, None when nothing was seen."""
        if self.bounds is None or self.count == 0:
            return None
        lo, hi = (int(v) for v in self.bounds.tolist())
        return ScaleClamp(count=self.count, at_min=lo / self.count, at_max=hi / self.count)


def coord_scale(module: nn.Module) -> torch.Tensor | None:
    """The seed 001 Coord scale of the module's last call, before its clamp (section 4B).

    `scale = 1 + beta * (((1 - alpha_h) + alpha_h * a_h) * ((1 - alpha_w) + alpha_w * a_w) - 1)`
    from the masks the module kept (`_last_ah`, `_last_aw`), in their dtype and on their device.
    """
    ah, aw = getattr(module, "_last_ah", None), getattr(module, "_last_aw", None)
    if not isinstance(ah, torch.Tensor) or not isinstance(aw, torch.Tensor):
        return None
    raw_h, raw_w = _scalar(module, "alpha_h_raw"), _scalar(module, "alpha_w_raw")
    if raw_h is None or raw_w is None:
        return None
    alpha_h = torch.sigmoid(raw_h).to(device=ah.device, dtype=ah.dtype)
    alpha_w = torch.sigmoid(raw_w).to(device=aw.device, dtype=aw.dtype)
    scale = ((1.0 - alpha_h) + alpha_h * ah.detach()) * ((1.0 - alpha_w) + alpha_w * aw.detach())
    beta = _number(module, "beta")
    return scale if beta is None else 1.0 + beta * (scale - 1.0)


@dataclass
class _BlockWatch:
    """The parts of one block that stream statistics."""

    routers: dict[str, nn.Module] = field(default_factory=dict)  # part -> the part (has Tr)
    clamps: dict[str, nn.Module] = field(default_factory=dict)
    pending: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # router outputs
    seen: dict[str, torch.Tensor] = field(default_factory=dict)  # last _last_ah folded


def _streamed_parts(model: nn.Module, blocks: list[BlockSpec]) -> dict[str, _BlockWatch]:
    """Per block, its parts with a router and its parts with a scale clamp (blocks with
    neither are left out)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    found: dict[str, _BlockWatch] = {}
    for spec in blocks:
        block = modules.get(spec.name)
        if block is None:
            continue
        watch = _BlockWatch()
        for part, module in block.named_modules():
            if _router(module) is not None:
                watch.routers[part] = module
                watch.pending[part] = []
            if _has_clamp(module):
                watch.clamps[part] = module
        if watch.routers or watch.clamps:
            found[spec.name] = watch
    return found


class MonitorObserver:
    """Streams the seed blocks' router shares and scale clamps; reports `extra["monitor"]`.

    Used by `analysis.RunState` (one per run): `attach` for the run, `on_block` after every block
    call, `results` per block at the end. Observers of two parts of a run `merge`.

    Example:
        >>> obs = MonitorObserver()
        >>> with obs.attach(model, blocks), MaskCapture(model, blocks, obs.on_block):
        ...     model(x)
        >>> obs.results(blocks[0].name, block_module)["monitor"]
    """

    def __init__(self) -> None:
        self.routers: dict[tuple[str, str], RouterAccumulator] = {}
        self.clamps: dict[tuple[str, str], ClampAccumulator] = {}
        self._watch: dict[str, _BlockWatch] = {}

    @staticmethod
    def watches(model: nn.Module, blocks: list[BlockSpec]) -> bool:
        """Whether any of the blocks has a part this observer streams (a router or a scale
        clamp): then it must see every block call of the run."""
        return bool(_streamed_parts(model, blocks))

    @contextlib.contextmanager
    def attach(self, model: nn.Module, blocks: list[BlockSpec]) -> Iterator[None]:
        """Hook the routers of the blocks' parts for the duration; every hook is removed on exit."""
        handles: list[Any] = []
        try:
            self._watch = _streamed_parts(model, blocks)
            for watch in self._watch.values():
                for part, module in watch.routers.items():
                    router = _router(module)
                    if router is not None:
                        handles.append(router.register_forward_hook(
                            self._stash(watch.pending[part])))
            yield
        finally:
            for h in handles:
                h.remove()
            for watch in self._watch.values():
                watch.pending.clear()
                watch.seen.clear()
            self._watch.clear()

    @staticmethod
    def _stash(pending: list[torch.Tensor]) -> Any:
        # Runs inside the block's traced call: keep the reference only, no torch op; the shares
        # are computed in `on_block`, after the tracer is off.
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                if len(pending) >= _MAX_PENDING:
                    del pending[0]
                pending.append(output)
        return hook

    def on_block(self, call: BlockCall) -> None:
        """Fold what the block's parts computed in this call."""
        watch = self._watch.get(call.spec.name)
        if watch is None:
            return
        with torch.no_grad():
            for part, module in watch.routers.items():
                outs = watch.pending.get(part, [])
                tr = _number(module, "Tr") or 1.0
                for logits in outs:
                    shares = torch.softmax(logits.reshape(logits.shape[0], -1) / tr, dim=1)
                    self.routers.setdefault((call.spec.name, part), RouterAccumulator()).update(
                        shares)
                outs.clear()
            for part, module in watch.clamps.items():
                ah = getattr(module, "_last_ah", None)
                if not isinstance(ah, torch.Tensor) or watch.seen.get(part) is ah:
                    continue
                watch.seen[part] = ah
                scale = coord_scale(module)
                lo, hi = _number(module, "scale_min"), _number(module, "scale_max")
                if scale is None or lo is None or hi is None:
                    continue
                self.clamps.setdefault((call.spec.name, part), ClampAccumulator()).update(
                    scale, lo, hi)

    def merge(self, other: MonitorObserver) -> None:
        """Combine the batches `other` saw (another part of the same run) into this observer."""
        for key, acc in other.routers.items():
            self.routers.setdefault(key, RouterAccumulator()).merge(acc)
        for key, cacc in other.clamps.items():
            self.clamps.setdefault(key, ClampAccumulator()).merge(cacc)

    def results(self, name: str, module: nn.Module) -> dict[str, Any]:
        """`{"monitor": {part: MonitorPart}}` for the block `name`, or {} if it exposes nothing."""
        parts = monitor_parts(module)
        for (block, part), acc in self.routers.items():
            shares = acc.finalize()
            if block == name and part in parts and shares is not None:
                parts[part]["router"] = shares
        for (block, part), cacc in self.clamps.items():
            clamp = cacc.finalize()
            if block == name and part in parts and clamp is not None:
                parts[part]["scale_clamp"] = clamp
        return {"monitor": _finite(parts)} if parts else {}


def _finite(parts: dict[str, MonitorPart]) -> dict[str, MonitorPart]:
    """NaN / inf become None: the report is strict JSON."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return clean(parts)  # type: ignore[no-any-return]


def probe(module: nn.Module) -> dict[str, Any]:
    """An `analysis.ExtraProbe` for the static entries only (no router shares or clamp shares)."""
    parts = monitor_parts(module)
    return {"monitor": _finite(parts)} if parts else {}
