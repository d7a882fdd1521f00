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
from coordatt_diag.results import BlockReport, Finding, Report, Summary

Rule = Callable[[BlockReport, Thresholds], list[Finding]]

_ORDER = {"ok": 0, "info": 0, "warn": 1, "fail": 2}

WEIGHT_DECAY_REMEDY = (
    "exclude the attention parameters (heads, alpha/beta) from weight decay or lower it; "
    "if it persists try add-on 5 (hard-sigmoid gate) or add-on 6 (attention residual)"
)


def _finding(block: BlockReport, code: str, severity: str, mask: str | None, value: float | None,
             threshold: float | None, message: str, remedy: str) -> Finding:
    return Finding(code=code, severity=severity, block=block.name, mask=mask, value=value,
                   threshold=threshold, message=message, remedy=remedy)


def _level(mean: float) -> str:
    if abs(mean - 0.5) < 0.02:
        return (f"sits at {mean:.3f}, the level of a sigmoid whose head outputs ~0 "
                "(an untrained or weight-decayed head)")
    return f"sits at {mean:.3f}"


def near_constant(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask that barely varies: the block is an expensive constant scale."""
    out = []
    for name, m in _scales(block):
        if m.std is None or m.mean is None:
            continue
        if not th.near_constant_mean_low <= m.mean <= th.near_constant_mean_high:
            continue
        if m.std >= th.near_constant_warn:
            continue
        fail = m.std < th.near_constant_fail
        limit = th.near_constant_fail if fail else th.near_constant_warn
        head = _init_like_head_std(block, name, th)
        if head is not None:
            out.append(_finding(
                block, "untrained", "warn", name, m.std, limit,
                f"{name} is near-constant (std {m.std:.4g} < {limit:g}) but untrained, not "
                f"collapsed: its head weights still look like their init (head weight std "
                f"{head[0]:.4g}, init std {head[1]:.4g})", UNTRAINED_REMEDY))
            continue
        rms = f"; block weight RMS {block.weight_rms:.4g}" if block.weight_rms is not None else ""
        out.append(_finding(
            block, "near_constant", "fail" if fail else "warn", name, m.std, limit,
            f"{name} is near-constant: std {m.std:.4g} < {limit:g}; it {_level(m.mean)}{rms}",
            WEIGHT_DECAY_REMEDY,
        ))
    return out


def _scales(block: BlockReport) -> list[tuple[str, Any]]:
    """Masks that scale a feature; `select` masks (weights across branches, summing to one) are
    judged by `branch_locked` instead."""
    return [(n, m) for n, m in block.masks.items() if n.split("#")[0] != "select"]


def branch_locked(block: BlockReport, th: Thresholds) -> list[Finding]:
    """Branch weights (`select`: SK, EPSA, LSK, a router) that are almost all 0 or 1: every
    sample takes one branch and the others are ignored."""
    out = []
    for name, m in block.masks.items():
        if name.split("#")[0] != "select" or not m.count:
            continue
        share = m.sat_low + m.sat_high
        if share < th.router_lock_share:
            continue
        out.append(_finding(
            block, "branch_locked", "warn", name, share, th.router_lock_share,
            f"{name} is locked: {share:.1%} of the branch weights are <= 0.01 or >= 0.99 "
            f"(>= {th.router_lock_share:.0%}), so each sample takes a single branch",
            "keep the selection soft: a higher softmax temperature, or a smaller learning rate "
            "for the selection layers",
        ))
    return out


def pass_through(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask mostly >= 0.99: the block costs compute and changes nothing."""
    return [
        _finding(block, "pass_through", "warn", name, m.sat_high, th.pass_through_share,
                 f"{name} passes everything: {m.sat_high:.1%} of values >= 0.99 "
                 f"(> {th.pass_through_share:.0%})",
                 "the block costs compute and changes nothing: check the head bias and the "
                 "learning rate of the heads, try add-on 4 (per-axis alpha) or remove the block")
        for name, m in _scales(block)
        if m.count and m.sat_high > th.pass_through_share
    ]


def suppression(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask often <= 0.01: the block shuts the signal off."""
    out = []
    for name, m in _scales(block):
        if not m.count or m.sat_low <= th.suppression_warn:
            continue
        fail = m.sat_low > th.suppression_fail
        limit = th.suppression_fail if fail else th.suppression_warn
        out.append(_finding(
            block, "suppression", "fail" if fail else "warn", name, m.sat_low, limit,
            f"{name} suppresses: {m.sat_low:.1%} of values <= 0.01 (> {limit:.0%})",
            "add-on 6 (attention residual, beta 0.2-1.0) keeps the signal flowing; "
            "add-on 5 (hard-sigmoid) keeps masks off 0 early in training",
        ))
    return out


def dead_hard_gate(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A gate stuck at exactly 0 or 1: a hard sigmoid in its flat region has no gradient."""
    return [
        _finding(block, "dead_hard_gate", "warn", name, m.exact01, th.dead_gate_share,
                 f"{name} is exactly 0 or 1 for {m.exact01:.1%} of values "
                 f"(> {th.dead_gate_share:.0%}): no gradient flows through the gate there",
                 "a hard sigmoid saturates outside [-3, 3]: use the sigmoid gate, scale the head "
                 "init down (std 0.01) or add add-on 6 (attention residual)")
        for name, m in _scales(block)
        if m.count and m.exact01 > th.dead_gate_share
    ]


def position_blind(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A positional mask that varies across channels but not along its axis: SE in disguise."""
    return [
        _finding(block, "position_blind", "warn", name, m.pos_std, th.position_blind_pos_std,
                 f"{name} is position-blind: positional std {m.pos_std:.4g} < "
                 f"{th.position_blind_pos_std:g} while channel std is {m.chan_std:.4g}; "
                 "the block degrades to SE",
                 "give the axis branch local context: add-on 1 (mean+max pooling), add-on 2 "
                 "(axis depthwise conv) or add-on 3 (dilated axis conv)")
        for name, m in block.masks.items()
        if _positional(name) and m.pos_std is not None and m.chan_std is not None
        and m.pos_std < th.position_blind_pos_std and m.chan_std >= th.position_blind_chan_std
    ]


def _positional(mask: str) -> bool:
    return mask.split("#")[0] in ("a_h", "a_w", "a_hw", "spatial")


def nonfinite(block: BlockReport, th: Thresholds) -> list[Finding]:
    """NaN or infinite mask values."""
    return [
        _finding(block, "nonfinite", "fail", name, float(m.nonfinite), 0.0,
                 f"{name} has {m.nonfinite} non-finite values (NaN or inf)",
                 "check the input normalisation and half-precision overflow; run the model in "
                 "float32 and look for a diverged training run")
        for name, m in block.masks.items()
        if m.nonfinite > 0
    ]


def low_std_ratio(block: BlockReport, th: Thresholds) -> list[Finding]:
    """The block output's std far below its input's: it over-suppresses."""
    if block.std_ratio is None:
        return []
    floor = th.std_ratio_floor if block.identity_path else th.std_ratio_floor_multiplicative
    if floor <= 0 or block.std_ratio.mean >= floor:
        return []
    return [_finding(
        block, "low_std_ratio", "warn", None, block.std_ratio.mean, floor,
        f"std ratio {block.std_ratio.mean:.3f} < {floor:g} (min over batches "
        f"{block.std_ratio.min:.3f}): the block over-suppresses its input",
        "raise beta / alpha, use add-on 6 (attention residual) or the seed's rescue "
        "(rescue_mode='alpha_floor', r_min 0.45)",
    )]


def dead_weight(block: BlockReport, th: Thresholds) -> list[Finding]:
    """Replacing the masks by a constant barely changes the output: the block is dead weight,
    whatever its statistics say (measured only with `--effect`)."""
    effect = block.effect
    if effect is None or th.dead_weight_effect <= 0:
        return []
    change = effect.constant.rel_l2
    if change is None or change >= th.dead_weight_effect:
        return []
    agree = effect.constant.top1_agreement
    top1 = f", top-1 unchanged for {agree:.1%} of samples" if agree is not None else ""
    return [_finding(
        block, "dead_weight", "warn", None, change, th.dead_weight_effect,
        f"replacing the masks by a constant changes the model output by {change:.1%} (relative "
        f"L2 < {th.dead_weight_effect:.0%}){top1}: the block is an expensive constant scale",
        "remove the block or retrain it: " + WEIGHT_DECAY_REMEDY,
    )]


# Seed blocks' own signals: `extra["monitor"]` (`coordatt_diag.stats.monitor`). Remedies name the seed
# 001 step-2 settings and the seed 000 add-ons.

UNTRAINED_REMEDY = (
    "train the block (the seed initialises the heads with std 0.01, so masks start near 0.5 with "
    "std ~0.004) and check that its heads get gradient (not frozen, learning rate not 0); if it "
    "stays flat after training, try add-on 5 (hard-sigmoid gate) or a larger coord_head_init_std"
)


def _monitor(block: BlockReport) -> dict[str, dict[str, Any]]:
    parts = block.extra.get("monitor")
    return parts if isinstance(parts, dict) else {}


def _where(part: str) -> str:
    return f"{part}: " if part else ""


def _init_like_head_std(block: BlockReport, mask: str,
                        th: Thresholds) -> tuple[float, float] | None:
    """(head weight std, init std) behind `mask` when every such head still looks like its init."""
    if th.untrained_head_std <= 0 or th.untrained_head_tolerance <= 0:
        return None
    base = mask.split("#")[0]
    heads = [(p["head_std"][base], p.get("head_init_std") or th.untrained_head_std)
             for p in _monitor(block).values()
             if isinstance(p.get("head_std"), dict) and p["head_std"].get(base) is not None]
    if not heads or any(abs(s / init - 1) >= th.untrained_head_tolerance for s, init in heads):
        return None
    return (float(sum(s for s, _ in heads) / len(heads)),
            float(sum(i for _, i in heads) / len(heads)))


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
            "keep the router soft: raise the router temperature (ca_router_temperature, seed 001 "
            "step 2 uses Tr 1.5, softmax(logits / Tr)) or fuse by sum (ca_fusion='sum')",
        ))
    return out


def rescue_engaged(block: BlockReport, th: Thresholds) -> list[Finding]:
    """The seed 001 monitor's EMA fell below r_min: training blends with a lowered alpha_eff."""
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
                  "; rescue_mode='alpha_floor' is the seed's more aggressive rescue")
        out.append(_finding(
            block, "rescue_engaged", "warn", None, r_ema, r_min,
            f"{_where(part)}rescue engaged ({mode}): r_ema {r_ema:.3f} < r_min {r_min:g}, so "
            f"training blends with {blend} (at inference the block uses alpha){off}",
            "the block over-suppresses its input (seed 001 reading notes): soften it with a "
            "smaller coord_beta / beta_ca or a higher coord_scale_min (step 2 soft scales and "
            f"clamp), or add add-on 6 (attention residual){harder}",
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
            "widen the T clamp (ca_t_min / ca_t_max, seed 001 step 2: 0.5-3.0) or fix T "
            "(learnable_temperature=False, ca_temperature 0.9); add-on 5 (hard-sigmoid gate) "
            "keeps a sharp gate off 0/1",
        ))
    return out


def scale_pinned(block: BlockReport, th: Thresholds) -> list[Finding]:
    """Most coordinate-scale values sit at the step-2 clamp bounds."""
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
            "lower coord_beta (seed 001 step-2 soft scale 1 + beta * (scale - 1), 0.35) or widen "
            "coord_scale_min / coord_scale_max; add-on 6 (attention residual, beta 0.2-0.5) "
            "keeps the scale near 1",
        ))
    return out


def alpha_off(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A blending alpha driven to 0: the block switched itself off."""
    out = []
    for part, p in _monitor(block).items():
        for key in ("alpha", "alpha_h", "alpha_w"):
            v = p.get(key)
            if v is None or v >= th.alpha_off:
                continue
            out.append(_finding(
                block, "alpha_off", "warn", None, v, th.alpha_off,
                f"{_where(part)}{key} {v:.4f} < {th.alpha_off:g}: the block switched itself off "
                "(its scale is ~1, the output ~ its input)",
                "exclude alpha from weight decay or fix it (learnable_alpha=False, "
                "coord_learnable_alpha=False); add-on 4 (per-axis alpha) lets one axis stay on, "
                "add-on 6 (attention residual) keeps the block on with a fixed beta",
            ))
    return out


RULES: list[Rule] = [nonfinite, near_constant, pass_through, suppression, dead_hard_gate,
                     position_blind, low_std_ratio, dead_weight, router_locked, rescue_engaged,
                     temperature_at_bound, scale_pinned, alpha_off, branch_locked]


def judge_block(block: BlockReport, th: Thresholds, rules: list[Rule] | None = None) -> BlockReport:
    """The block with its findings and status filled in."""
    findings: list[Finding] = []
    for rule in rules if rules is not None else RULES:
        findings.extend(rule(block, th))
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
