"""Turn block statistics into health findings with remedies.

Each rule looks at one block's frozen statistics (`BlockReport`) and the thresholds that apply to
it, and returns findings. The remedies name the seed add-ons (`../shared/seeds/NOTES.md`, seed 000
sections 1-9) to try. Codes, severities and thresholds are listed in the README's thresholds
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from coordatt_diag.results import BlockReport, Finding, Report, Summary
from coordatt_diag.thresholds import ThresholdConfig, Thresholds

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
    for name, m in block.masks.items():
        if m.std is None or m.mean is None:
            continue
        if not th.near_constant_mean_low <= m.mean <= th.near_constant_mean_high:
            continue
        if m.std >= th.near_constant_warn:
            continue
        fail = m.std < th.near_constant_fail
        limit = th.near_constant_fail if fail else th.near_constant_warn
        rms = f"; block weight RMS {block.weight_rms:.4g}" if block.weight_rms is not None else ""
        out.append(_finding(
            block, "near_constant", "fail" if fail else "warn", name, m.std, limit,
            f"{name} is near-constant: std {m.std:.4g} < {limit:g}; it {_level(m.mean)}{rms}",
            WEIGHT_DECAY_REMEDY,
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
        for name, m in block.masks.items()
        if m.count and m.sat_high > th.pass_through_share
    ]


def suppression(block: BlockReport, th: Thresholds) -> list[Finding]:
    """A mask often <= 0.01: the block shuts the signal off."""
    out = []
    for name, m in block.masks.items():
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
        for name, m in block.masks.items()
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


RULES: list[Rule] = [nonfinite, near_constant, pass_through, suppression, dead_hard_gate,
                     position_blind, low_std_ratio]


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
