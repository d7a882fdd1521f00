"""Turn block statistics into health findings with remedies.

Each rule looks at one block's frozen statistics (`BlockReport`) and the thresholds that apply to
it, and returns findings. The remedies name the seed add-ons (`../shared/seeds/NOTES.md`, seed 000
sections 1-9) to try. Codes, severities and thresholds are listed in the README's thresholds
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from coordatt_diag.health.thresholds import ThresholdConfig, Thresholds
from coordatt_diag.results import BlockReport, Finding, MaskStats, Report, Summary

Rule = Callable[[BlockReport, Thresholds], list[Finding]]

_ORDER = {"ok": 0, "info": 0, "warn": 1, "fail": 2}

#: The page that explains every finding and its remedies, one section (anchor) per code.
DOC = "docs/remedies.md"

#: Remedies in plain words; the user's block numbering ("add-on N") only as a cross-reference.
REMEDIES = {
    "collapsed": (
        "exclude the attention parameters (the heads that compute the masks, alpha/beta) from "
        "weight decay or lower it, and retrain; if the masks still flatten, a hard-sigmoid gate "
        "(add-on 5) or an attention residual that keeps part of the input (add-on 6) helps"),
    "untrained": (
        "train the block: check that its parameters are given to the optimizer, are not frozen "
        "(requires_grad) and get a learning rate above 0, and that the checkpoint holds the "
        "trained weights; random masks change the output without having learnt anything"),
    "saturated": (
        "the gates sit at 0 and 1 where a sigmoid has no gradient: scale the head init down "
        "(std 0.01), lower the heads' learning rate, add weight decay on the heads, or put a "
        "temperature on the gate logits; keep part of the input with an attention residual "
        "(add-on 6)"),
    "suppression": (
        "keep part of the signal flowing past the gate with an attention residual "
        "(x * (1 + beta * (a - 1)), beta 0.2-1.0; add-on 6), or start the heads with a bias of "
        "0 so the gates open at 0.5; a hard-sigmoid gate (add-on 5) keeps masks off 0 early in "
        "training"),
    "pass_through": (
        "the gate passes everything, so the block costs compute and changes nothing: check the "
        "head bias and the heads' learning rate, give each axis its own blend weight (per-axis "
        "alpha, add-on 4), or remove the block"),
    "dead_hard_gate": (
        "a hard sigmoid is flat outside [-3, 3]: use the smooth sigmoid gate, scale the head init "
        "down (std 0.01), or keep part of the input with an attention residual (add-on 6)"),
    "position_blind": (
        "give the axis branch local context along the axis: mean plus max pooling (add-on 1), a "
        "depthwise conv along the axis (add-on 2) or a dilated one (add-on 3)"),
    "nonfinite": (
        "check the input normalisation and half-precision overflow; run the model in float32 "
        "and look for a diverged training run"),
    "low_std_ratio": (
        "the block removes most of the signal it can remove: raise the blend's floor (a larger "
        "attention-residual beta or a smaller alpha), keep part of the input with an attention "
        "residual (add-on 6), or use the alpha-floor rescue of the channel-plus-coordinate block "
        "(rescue_mode='alpha_floor', r_min 0.45)"),
    "dead_weight": (
        "replacing the masks by a constant barely changes the output: remove the block, or "
        "retrain it with its parameters out of weight decay"),
}


def _finding(block: BlockReport, code: str, severity: str, mask: str | None, value: float | None,
             threshold: float | None, message: str, remedy: str | None = None,
             doc: str | None = None) -> Finding:
    return Finding(code=code, severity=severity, block=block.name, mask=mask, value=value,
                   threshold=threshold, message=message,
                   remedy=remedy if remedy is not None else REMEDIES[code],
                   doc=f"{DOC}#{doc or code}")


def _level(mean: float) -> str:
    if abs(mean - 0.5) < 0.02:
        return (f"sits at {mean:.3f}, the level of a sigmoid whose head outputs ~0 "
                "(a weight-decayed head)")
    return f"sits at {mean:.3f}"


def _kind(mask: str) -> str:
    return mask.split("#")[0]


def _constant_levels(mask: str, th: Thresholds) -> tuple[float, float]:
    """(warn, fail) std levels of a near-constant mask of this kind."""
    if _kind(mask) in ("channel", "select"):
        return th.near_constant_channel_warn, th.near_constant_channel_fail
    return th.near_constant_warn, th.near_constant_fail


def _effect_change(block: BlockReport) -> float | None:
    return block.effect.constant.rel_l2 if block.effect is not None else None


def _accuracy_drop(block: BlockReport) -> float | None:
    return block.effect.constant.accuracy_drop if block.effect is not None else None


def effect_matters(block: BlockReport, th: Thresholds) -> bool | None:
    """What the mask effect says (None without `--effect`): replacing the block's masks by a
    constant changes the output by at least `dead_weight_effect`, or, with labels, costs at
    least `dead_weight_accuracy` of accuracy (a small change of the logits that flips
    decisions still matters)."""
    change = _effect_change(block)
    if change is None:
        return None
    drop = _accuracy_drop(block)
    return change >= th.dead_weight_effect or (
        drop is not None and th.dead_weight_accuracy > 0
        and drop >= th.dead_weight_accuracy - 1e-9)  # k/n differences carry rounding error


def informative(block: BlockReport, mask: str, m: MaskStats, th: Thresholds) -> bool:
    """Whether the mask carries information about the input.

    With `--effect` the mask effect decides: replacing the block's masks by a constant changes
    the output by at least `dead_weight_effect`. Without it, the statistics: the mask is not
    near-constant (std at or above its kind's fail level) and not constant per channel over the
    inputs (`sample_std` and `pos_std` below `uninformative_sample_std`).
    """
    matters = effect_matters(block, th)
    if matters is not None:
        return matters
    if m.std is not None and m.std < _constant_levels(mask, th)[1]:
        return False
    flat = th.uninformative_sample_std
    constant_per_channel = (m.sample_std is not None and m.sample_std < flat
                            and (m.pos_std is None or m.pos_std < flat))
    return not constant_per_channel


def _why_uninformative(block: BlockReport, m: MaskStats) -> str:
    change = _effect_change(block)
    if change is not None:
        return f"replacing the masks by a constant changes the output by only {change:.1%}"
    per = f"its per-channel value varies over inputs by {m.sample_std:.3g}" \
        if m.sample_std is not None else ""
    return f"std {m.std:.3g}; {per}" if m.std is not None else per


def _saturated(m: MaskStats, th: Thresholds) -> bool:
    return (m.count > 0 and m.sat_low + m.sat_high > th.saturated_share
            and min(m.sat_low, m.sat_high) >= th.saturated_side)


def near_constant(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask that barely varies: the block is an expensive constant scale (collapsed). Branch
    weights (`select`) that barely vary make the block a fixed blend of its branches; their mean
    is 1/branches whatever they do, so only their spread is judged."""
    out = []
    for name, m in block.masks.items():
        if m.std is None or m.mean is None:
            continue
        if (_kind(name) != "select"
                and not th.near_constant_mean_low <= m.mean <= th.near_constant_mean_high):
            continue
        warn, fail_level = _constant_levels(name, th)
        if m.std >= warn:
            continue
        change = _effect_change(block)
        if change is not None:
            fail = not effect_matters(block, th)
            why = (f"; replacing the masks by a constant changes the output by {change:.1%}"
                   + (" (they carry nothing)" if fail else " (they still do some work)"))
        else:
            fail = m.std < fail_level
            why = ""
        limit = fail_level if fail and change is None else warn
        rms = f"; block weight RMS {block.weight_rms:.4g}" if block.weight_rms is not None else ""
        out.append(_finding(
            block, "near_constant", "fail" if fail else "warn", name, m.std, limit,
            f"{name} is near-constant: std {m.std:.4g} < {limit:g} ({_kind(name)} masks); it "
            f"{_level(m.mean)}{rms}{why}",
            REMEDIES["collapsed"]))
    return out


def _scales(block: BlockReport) -> list[tuple[str, Any]]:
    """Masks that scale a feature; `select` masks (weights across branches, summing to one) are
    judged by `branch_locked` instead."""
    return [(n, m) for n, m in block.masks.items() if n.split("#")[0] != "select"]


def branch_locked(block: BlockReport, th: Thresholds) -> list[Finding]:
    """Branch weights (`select`: SK, EPSA, LSK) mostly at 0 or 1: those samples and channels
    take a single branch, the others are ignored, and a softmax that saturated passes no
    gradient to the selection."""
    out = []
    for name, m in block.masks.items():
        if _kind(name) != "select" or not m.count:
            continue
        share = m.sat_low + m.sat_high
        if share < th.branch_locked_share:
            continue
        out.append(_finding(
            block, "branch_locked", "warn", name, share, th.branch_locked_share,
            f"{name} is locked: {share:.1%} of the branch weights are <= 0.01 or >= 0.99 "
            f"(>= {th.branch_locked_share:.0%}), so most samples and channels take a single "
            "branch",
            "keep the selection soft: a higher softmax temperature, a smaller init or learning "
            "rate for the selection layers, or weight decay on them",
        ))
    return out


def pass_through(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask mostly >= 0.99: this part costs compute and changes nothing."""
    return [
        _finding(block, "pass_through", "warn", name, m.sat_high, th.pass_through_share,
                 f"{name} passes everything: {m.sat_high:.1%} of values >= 0.99 "
                 f"(> {th.pass_through_share:.0%})")
        for name, m in _scales(block)
        if m.count and m.sat_high > th.pass_through_share and not _saturated(m, th)
    ]


def suppression(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask mostly <= 0.01: the block shuts the signal off. It fails only when the mask also
    carries no information (see `informative`); gates that are sparse but input-driven warn."""
    out = []
    for name, m in _scales(block):
        if not m.count or m.sat_low <= th.suppression_warn or _saturated(m, th):
            continue
        info = informative(block, name, m, th)
        fail = m.sat_low > th.suppression_fail and not info
        limit = th.suppression_fail if fail else th.suppression_warn
        tail = (f"; and it carries no information ({_why_uninformative(block, m)})" if fail
                else "; the gates still follow the input")
        out.append(_finding(
            block, "suppression", "fail" if fail else "warn", name, m.sat_low, limit,
            f"{name} suppresses: {m.sat_low:.1%} of values <= 0.01 (> {limit:.0%}){tail}"))
    return out


def saturated(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask pinned at both 0 and 1: gates with no gradient. Fails when the mask also carries
    no information; a saturated mask that follows the input warns (training cannot move it)."""
    out = []
    for name, m in _scales(block):
        if not _saturated(m, th):
            continue
        info = informative(block, name, m, th)
        share = m.sat_low + m.sat_high
        tail = ("; the gates still follow the input, as binary switches" if info
                else f"; and they carry no information ({_why_uninformative(block, m)})")
        out.append(_finding(
            block, "saturated", "warn" if info else "fail", name, share, th.saturated_share,
            f"{name} is saturated: {share:.1%} of values at 0 or 1 ({m.sat_low:.1%} <= 0.01, "
            f"{m.sat_high:.1%} >= 0.99; > {th.saturated_share:.0%}): no gradient flows through "
            f"the gate there{tail}"))
    return out


def dead_hard_gate(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A hard gate stuck at exactly 0 or 1, where it has no gradient.

    A plain sigmoid rounds to exactly 1.0 in float32 past ~17 and to exactly 0 only past ~-100,
    while a hard sigmoid is exactly 0 below -3: the finding needs exact zeros and nearly every
    saturated value exact, the signature of a hard gate.
    """
    out = []
    for name, m in _scales(block):
        if not m.count or m.exact01 <= th.dead_gate_share:
            continue
        exact_zeros = m.exact01 > m.sat_high + 1e-12
        if not exact_zeros or m.exact01 < 0.95 * (m.sat_low + m.sat_high):
            continue
        out.append(_finding(
            block, "dead_hard_gate", "warn", name, m.exact01, th.dead_gate_share,
            f"{name} is exactly 0 or 1 for {m.exact01:.1%} of values "
            f"(> {th.dead_gate_share:.0%}): a hard gate in its flat region, no gradient flows "
            "through it there"))
    return out


def position_blind(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A positional mask that varies across channels but not along its axis: SE in disguise."""
    return [
        _finding(block, "position_blind", "warn", name, m.pos_std, th.position_blind_pos_std,
                 f"{name} is position-blind: positional std {m.pos_std:.4g} < "
                 f"{th.position_blind_pos_std:g} while channel std is {m.chan_std:.4g}; "
                 "the block degrades to a channel gate")
        for name, m in block.masks.items()
        if _positional(name) and m.pos_std is not None and m.chan_std is not None
        and m.pos_std < th.position_blind_pos_std and m.chan_std >= th.position_blind_chan_std
    ]


def _positional(mask: str) -> bool:
    return _kind(mask) in ("a_h", "a_w", "a_hw", "spatial")


def nonfinite(block: BlockReport, th: Thresholds) -> list[Finding]:
    """NaN or infinite mask values."""
    return [
        _finding(block, "nonfinite", "fail", name, float(m.nonfinite), 0.0,
                 f"{name} has {m.nonfinite} non-finite values (NaN or inf)")
        for name, m in block.masks.items()
        if m.nonfinite > 0
    ]


def low_std_ratio(block: BlockReport, th: Thresholds) -> list[Finding]:
    """The block's output std far below its input's, on the range its own blend allows.

    A block that scales its input by at least s (its `scale_floor`: 1 - alpha * beta for the
    package's blend, 0 when unknown) cannot bring its std ratio below ~s; the floor applies to
    (ratio - s) / (1 - s), the share of the removable signal the block keeps. Multiplicative
    blocks have their own floor (off by default).
    """
    if block.std_ratio is None:
        return []
    floor = th.std_ratio_floor if block.identity_path else th.std_ratio_floor_multiplicative
    if floor <= 0:
        return []
    s = block.scale_floor if block.scale_floor is not None and block.scale_floor < 1 else 0.0
    ratio = block.std_ratio.mean
    kept = (ratio - s) / (1.0 - s)
    if kept >= floor:
        return []
    blend = f" over the blend's floor {s:.3f}" if s > 0 else ""
    return [_finding(
        block, "low_std_ratio", "warn", None, kept, floor,
        f"std ratio {ratio:.3f} (min over batches {block.std_ratio.min:.3f}) keeps "
        f"{kept:.1%}{blend} of the signal the block can remove (< {floor:.0%}): the block "
        "over-suppresses its input")]


def dead_weight(block: BlockReport, th: Thresholds) -> list[Finding]:
    """Replacing the masks by a constant barely changes the output: the block is dead weight,
    whatever its statistics say (measured only with `--effect`)."""
    change = _effect_change(block)
    if change is None or th.dead_weight_effect <= 0 or effect_matters(block, th):
        return []
    agree = block.effect.constant.top1_agreement if block.effect else None
    top1 = f", top-1 unchanged for {agree:.1%} of samples" if agree is not None else ""
    return [_finding(
        block, "dead_weight", "warn", None, change, th.dead_weight_effect,
        f"replacing the masks by a constant changes the model output by {change:.1%} (relative "
        f"L2 < {th.dead_weight_effect:.0%}){top1}: the block is an expensive constant scale")]


def untrained(block: BlockReport, th: Thresholds) -> list[Finding]:
    """Every weight of the block still at its init, and masks that random heads give.

    The weight evidence (`BlockReport.weight_init`) compares each weight tensor with its init
    distribution: the block's own where it declares one, PyTorch's default U(+-1/sqrt(fan_in))
    otherwise. Weight decay shrinks weights below their init's spread and training pushes them
    past its bound, so neither a collapsed nor a trained block passes. The masks must not be
    saturated (random heads give masks around the gate's middle). It warns, never fails: a block
    trained only a little still fits its init (the validation study met one whose masks mattered),
    so the finding says what the weights show and the effect, when measured, how much the output
    depends on those masks.
    """
    wi = block.weight_init
    if (wi is None or wi.tensors == 0 or wi.at_init < wi.tensors or not block.masks
            or wi.values < th.untrained_min_values):
        return []
    if any(m.count and m.sat_low + m.sat_high >= th.untrained_mask_saturation
           for m in block.masks.values()):
        return []
    change = _effect_change(block)
    means = ", ".join(f"{k} mean {m.mean:.2f} std {m.std:.3g}" for k, m in block.masks.items()
                      if m.mean is not None and m.std is not None)
    bound = (f", largest |w| {wi.max_bound_ratio:.0%} of the init bound"
             if wi.max_bound_ratio is not None else "")
    effect = (f"; replacing these masks by a constant changes the output by {change:.1%}"
              + (" (the output depends on masks that may have learnt nothing)"
                 if change >= th.dead_weight_effect else "")
              if change is not None else "")
    return [_finding(
        block, "untrained", "warn", None, float(wi.at_init),
        float(wi.tensors),
        f"untrained: all {wi.tensors} weight tensors still look like their init ({wi.init}; "
        f"median std {wi.std_ratio:.2f}x the init's{bound}); masks: {means}{effect}")]


# The package blocks' own signals: `extra["monitor"]` (`coordatt_diag.stats.monitor`). Remedies
# name the blocks' settings.

def _monitor(block: BlockReport) -> dict[str, dict[str, Any]]:
    parts = block.extra.get("monitor")
    return parts if isinstance(parts, dict) else {}


def _where(part: str) -> str:
    return f"{part}: " if part else ""


def router_locked(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A softmax router that sends (almost) every sample to one branch."""
    out = []
    for part, p in _monitor(block).items():
        router = p.get("router")
        if not router or not router.get("mean"):
            continue
        means = router["mean"]
        i = max(range(len(means)), key=lambda k: means[k] if means[k] is not None else -1.0)
        share = means[i]
        if share is None or share < th.router_lock_share:
            continue
        branch = ("avg-pooled", "max-pooled")[i] if len(means) == 2 else f"#{i}"
        out.append(_finding(
            block, "router_locked", "warn", None, share, th.router_lock_share,
            f"{_where(part)}router locked on the {branch} branch: mean share {share:.3f} >= "
            f"{th.router_lock_share:g} (max {router['max'][i]:.3f}) over {router['samples']} "
            "samples; the other descriptor is ignored",
            "keep the router soft: raise the router temperature (ca_router_temperature, e.g. "
            "1.5: softmax(logits / 1.5)) or fuse the two descriptors by sum (ca_fusion='sum')",
        ))
    return out


def rescue_engaged(block: BlockReport, th: Thresholds) -> list[Finding]:
    """The block's own monitor EMA fell below r_min: training blends with a lowered alpha_eff."""
    out = []
    for part, p in _monitor(block).items():
        r_ema, r_min = p.get("r_ema"), p.get("r_min")
        if r_ema is None or r_min is None or r_ema >= r_min:
            continue
        mode = p.get("rescue_mode", "ratio_floor")
        alpha, alpha_eff = p.get("alpha"), p.get("alpha_eff")
        blend = (f"alpha_eff {alpha_eff:.3f} instead of alpha {alpha:.3f}"
                 if alpha is not None and alpha_eff is not None else "a lowered alpha_eff")
        off = "" if p.get("monitor") else "; monitor is off now"
        harder = ("" if mode == "alpha_floor" else
                  "; rescue_mode='alpha_floor' is the more aggressive rescue")
        out.append(_finding(
            block, "rescue_engaged", "warn", None, r_ema, r_min,
            f"{_where(part)}rescue engaged ({mode}): r_ema {r_ema:.3f} < r_min {r_min:g}, so "
            f"training blends with {blend} (at inference the block uses alpha){off}",
            "the block over-suppresses its input: soften it with a smaller coord_beta / beta_ca "
            "or a higher coord_scale_min (the soft scales and their clamp), or keep part of the "
            f"input with an attention residual (add-on 6){harder}",
        ))
    return out


def temperature_at_bound(block: BlockReport, th: Thresholds) -> list[Finding]:
    """The channel gate's temperature T sits at (or beyond) its clamp bound."""
    out = []
    for part, p in _monitor(block).items():
        raw, t = p.get("T_raw"), p.get("T")
        if raw is None or t is None:
            continue
        low, high = p.get("t_min"), p.get("t_max")
        if low is not None and raw <= low * (1 + 1e-3):
            side, bound, effect = "t_min", low, "sharpens the channel gate towards 0/1"
        elif high is not None and raw >= high * (1 - 1e-3):
            side, bound, effect = "t_max", high, "flattens the channel gate towards 0.5"
        else:
            continue
        why = ("the learnable T gets no gradient past the clamp" if p.get("learnable_temperature")
               else "the fixed T is the clamp's")
        out.append(_finding(
            block, "temperature_at_bound", "warn", None, raw, bound,
            f"{_where(part)}temperature T at its clamp bound: T {t:.3f} (before the clamp "
            f"{raw:.3f}) at {side} {bound:g}; it {effect}; {why}",
            "widen the temperature clamp (ca_t_min / ca_t_max, e.g. 0.5-3.0) or fix T "
            "(learnable_temperature=False, ca_temperature 0.9); a hard-sigmoid gate (add-on 5) "
            "keeps a sharp gate off 0/1",
        ))
    return out


def scale_pinned(block: BlockReport, th: Thresholds) -> list[Finding]:
    """Most coordinate-scale values sit at their clamp bounds."""
    out = []
    for part, p in _monitor(block).items():
        clamp = p.get("scale_clamp")
        if not clamp:
            continue
        share = clamp["at_min"] + clamp["at_max"]
        if share <= th.clamp_pinned_share:
            continue
        out.append(_finding(
            block, "scale_pinned", "warn", None, share, th.clamp_pinned_share,
            f"{_where(part)}coordinate scale pinned at its clamp for {share:.1%} of values "
            f"(> {th.clamp_pinned_share:.0%}): {clamp['at_min']:.1%} at scale_min "
            f"{p.get('scale_min')}, {clamp['at_max']:.1%} at scale_max {p.get('scale_max')}; "
            "no gradient flows through the clamped values",
            "lower coord_beta (the soft scale 1 + beta * (scale - 1), e.g. 0.35) or widen "
            "coord_scale_min / coord_scale_max; an attention residual (beta 0.2-0.5, add-on 6) "
            "keeps the scale near 1",
        ))
    return out


def alpha_off(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A blending alpha driven to 0 (in magnitude: a negative alpha scales the input up, it is
    not off): the block switched itself off."""
    out = []
    for part, p in _monitor(block).items():
        for key in ("alpha", "alpha_h", "alpha_w"):
            v = p.get(key)
            if v is None or abs(v) >= th.alpha_off:
                continue
            out.append(_finding(
                block, "alpha_off", "warn", None, v, th.alpha_off,
                f"{_where(part)}{key} {v:.4f}, |{key}| < {th.alpha_off:g}: the block switched itself off "
                "(its scale is ~1, the output ~ its input)",
                "exclude alpha from weight decay or fix it (learnable_alpha=False, "
                "coord_learnable_alpha=False); a blend weight per axis (per-axis alpha, add-on 4) "
                "lets one axis stay on, an attention residual with a fixed beta (add-on 6) keeps "
                "the block on",
            ))
    return out


RULES: list[Rule] = [nonfinite, untrained, near_constant, saturated, pass_through, suppression,
                     dead_hard_gate, position_blind, low_std_ratio, dead_weight, router_locked,
                     rescue_engaged, temperature_at_bound, scale_pinned, alpha_off,
                     branch_locked]

#: Findings an `untrained` finding explains on the same block (random masks, not a collapse).
_EXPLAINED_BY_UNTRAINED = frozenset({"near_constant", "position_blind", "dead_weight",
                                     "low_std_ratio"})
#: Per-mask warnings that one part of a multi-mask block may carry while its other parts work
#: (a collapsed part is not among them: the study met a CBAM whose channel map had collapsed
#: while its spatial map still worked).
_PART_WARNINGS = frozenset({"pass_through"})


def combine(block: BlockReport, findings: list[Finding], th: Thresholds) -> list[Finding]:
    """The block's findings weighed together, so its status comes from all its parts.

    * An `untrained` finding explains the near-constant, position-blind, dead-weight and low
      std-ratio findings of the same block: they are dropped (a random block is not collapsed).
    * In a block with several masks, a pass-through warning on one mask becomes `info` when
      the block's other masks raise nothing and the block does work: its mask effect reaches
      `dead_weight_effect` (with `--effect`), or, without it, the other masks are informative
      (`informative`).
    """
    if any(f.code == "untrained" for f in findings):
        findings = [f for f in findings if f.code not in _EXPLAINED_BY_UNTRAINED]
    if len(block.masks) < 2:
        return findings
    flagged = {f.mask for f in findings if f.mask is not None and f.severity != "info"}
    block_level = [f for f in findings if f.mask is None and f.severity != "info"]
    out = []
    for f in findings:
        if f.code in _PART_WARNINGS and f.severity == "warn" and f.mask is not None \
                and not block_level:
            others = [k for k in block.masks if k != f.mask]
            working = others and not any(k in flagged for k in others)
            change = _effect_change(block)
            matters = effect_matters(block, th)
            if working and (matters or matters is None
                            and all(informative(block, k, block.masks[k], th) for k in others)):
                work = (f"replacing the masks changes the output by {change:.1%}"
                        if change is not None else "they follow the input")
                f = dataclasses.replace(f, severity="info", message=(
                    f"{f.message} (not counted: the block's other masks "
                    f"({', '.join(others)}) do its work, {work})"))
        out.append(f)
    return out


def judge_block(block: BlockReport, th: Thresholds, rules: list[Rule] | None = None) -> BlockReport:
    """The block with its findings (weighed together by `combine`) and status filled in."""
    findings: list[Finding] = []
    for rule in rules if rules is not None else RULES:
        findings.extend(rule(block, th))
    findings = combine(block, findings, th)
    return dataclasses.replace(block, findings=findings, status=worst(findings))


def worst(findings: list[Finding]) -> str:
    """The status a list of findings gives: "fail", "warn" or "ok"."""
    level = max((_ORDER[f.severity] for f in findings), default=0)
    return ("ok", "warn", "fail")[level]


def summarize(blocks: list[BlockReport], extra: list[Finding] | None = None) -> Summary:
    """Counts of blocks by status, and the model's status."""
    status = worst([f for b in blocks for f in b.findings] + list(extra or []))
    return Summary(
        blocks=len(blocks),
        ok=sum(b.status == "ok" for b in blocks),
        warn=sum(b.status == "warn" for b in blocks),
        fail=sum(b.status == "fail" for b in blocks),
        status=status,
    )


def judge(report: Report, config: ThresholdConfig) -> Report:
    """Re-judge a whole report with `config` (e.g. a report read back from JSON)."""
    blocks = [judge_block(b, config.for_block(b.name)) for b in report.blocks]
    return dataclasses.replace(
        report, blocks=blocks, summary=summarize(blocks, report.findings),
        thresholds=config.to_dict(),
    )
