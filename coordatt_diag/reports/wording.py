"""Findings in plain words, for people reading a terminal: the one-line verdict, findings grouped
per block and finding (a_h and a_w on one line), and the legend of the table columns.

Formatting only: every value shown was measured and judged in `coordatt_diag.health`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coordatt_diag.results import BlockReport, Finding, Report, display_name

if TYPE_CHECKING:
    from coordatt_diag.runs.check import CheckResult

_SEVERITY_RANK = {"info": 0, "warn": 1, "fail": 2}

#: finding code -> what it means for the block, in words (the part after "block: ").
PHRASES: dict[str, str] = {
    "untrained": "masks still at their initial values — the attention was not trained",
    "pass_through": "masks at ≈1 — the block passes everything and changes nothing",
    "suppression": "masks often at ≈0 — the block shuts the signal off",
    "dead_hard_gate": "gates stuck at exactly 0 or 1 — no gradient flows through them",
    "position_blind": "masks do not vary along their axis — the block works like SE",
    "nonfinite": "NaN or infinite mask values",
    "low_std_ratio": "output far weaker than the input — the block over-suppresses",
    "dead_weight": "replacing the masks barely changes the output — the block does nothing",
    "router_locked": "the pooling router is locked on one branch",
    "rescue_engaged": "the rescue blend is on — training bypasses part of the attention",
    "temperature_at_bound": "the gate temperature sits at its clamp bound",
    "scale_pinned": "the coordinate scale is pinned at its clamp",
    "alpha_off": "the blend weight is ≈0 — the block switched itself off",
    "baseline_regression": "mask statistics fell from the baseline",
    "baseline_missing_block": "in the baseline but not found in the model",
    "baseline_new_block": "not in the baseline",
    "baseline_changed_block": "computes other masks than in the baseline",
    "baseline_inputs_differ": "measured on other inputs than the baseline",
}

#: column or term -> its explanation, for the legend under the tables.
GLOSSARY: dict[str, str] = {
    "std": "spread of the mask values (≈0: constant)",
    "sat<=.01": "share of values <= 0.01",
    "sat>=.99": "share >= 0.99",
    "pos std": "spread along the mask's axis (≈0: blind to position)",
    "std ratio": "block output std / input std",
    "head std": "std of the attention head weights",
    "weight RMS": "root mean square of the block's weights",
}


def ascii_text(text: str) -> str:
    """The text with the few non-ASCII signs used here replaced (for ASCII-only consoles)."""
    return text.replace("≈", "~").replace("—", "--").replace("→", "->")


def _near_constant_phrase(findings: Sequence[Finding], block: BlockReport | None) -> str:
    means = [block.masks[f.mask].mean for f in findings
             if block is not None and f.mask in block.masks]
    values = [m for m in means if m is not None]
    if values and all(abs(m - 0.5) < 0.02 for m in values):
        return "masks stuck at ≈0.50 — the attention does nothing"
    level = f" at ≈{sum(values) / len(values):.2f}" if values else ""
    return f"masks nearly constant{level} — the block is a fixed scale"


def block_phrase(block: BlockReport | None, findings: Sequence[Finding]) -> str:
    """What is wrong with one block, in words: the phrase of its most severe finding (the first of
    them in report order)."""
    top = max(_SEVERITY_RANK.get(f.severity, 0) for f in findings)
    first = next(f for f in findings if _SEVERITY_RANK.get(f.severity, 0) == top)
    same = [f for f in findings if f.code == first.code]
    if first.code == "near_constant":
        return _near_constant_phrase(same, block)
    return PHRASES.get(first.code, first.code.replace("_", " "))


def _names(names: list[str], limit: int = 4) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit - 1])} and {len(names) - limit + 1} more"


def verdict(report: Report) -> str:
    """One line: which blocks have what problem, in words, then the healthy ones.

    e.g. "stage1.att, stage2.att: masks stuck at ≈0.50 — the attention does nothing; stage3.att:
    healthy".
    """
    groups: dict[str, list[str]] = {}
    healthy: list[str] = []
    for b in report.blocks:
        name = display_name(b.name)
        judged = [f for f in b.findings if f.severity in ("warn", "fail")]
        if not judged:
            healthy.append(name)
            continue
        groups.setdefault(block_phrase(b, judged), []).append(name)
    model = [f for f in report.findings if f.severity in ("warn", "fail")]
    parts = [f"{_names(names)}: {phrase}" for phrase, names in groups.items()]
    if model:
        parts.append(f"model: {block_phrase(None, model)}")
    if not report.blocks:
        parts.append("no attention block")
    elif not healthy:
        pass
    elif len(healthy) == len(report.blocks):
        parts.append("every block healthy" if len(healthy) > 1 else f"{healthy[0]}: healthy")
    elif len(healthy) <= 3:
        parts.append(f"{', '.join(healthy)}: healthy")
    else:
        parts.append(f"{len(healthy)} other blocks healthy")
    return "; ".join(parts)


# Words, numbers (with a decimal part, exponent or percent sign), spaces, any other sign.
_TOKEN = re.compile(r"[A-Za-z_][\w\-]*|\d+(?:\.\d+)?(?:e[-+]?\d+)?%?|\s+|.")


def merge_messages(messages: Sequence[str]) -> str:
    """One message for several masks: where the messages differ only in a word or number, the
    values are joined with "/" in mask order ("a_h/a_w ... std 0.014/0.016 < 0.03"); messages of
    other shapes are joined with "; "."""
    if len(set(messages)) == 1:
        return messages[0]
    tokens = [_TOKEN.findall(m) for m in messages]
    if len({len(t) for t in tokens}) != 1:
        return "; ".join(messages)
    out = []
    for column in zip(*tokens, strict=True):
        if len(set(column)) == 1:
            out.append(column[0])
        elif any(t.isspace() for t in column):
            return "; ".join(messages)
        else:
            out.append("/".join(column))
    return "".join(out)


@dataclass(frozen=True)
class FindingGroup:
    """The findings of one block with the same code and severity (one per mask).

    Attributes:
        block: the block's name ("" for the model).
        code: the finding code.
        severity: "info", "warn" or "fail".
        masks: the masks, in report order (empty for findings about the whole block).
        message: the messages merged (`merge_messages`).
        remedy: the remedy they share.
    """

    block: str
    code: str
    severity: str
    masks: tuple[str, ...]
    message: str
    remedy: str

    @property
    def where(self) -> str:
        """The block's display name and its masks: "stage1.att a_h, a_w"."""
        name = display_name(self.block) if self.block else "model"
        return name + (f" {', '.join(self.masks)}" if self.masks else "")


def group_findings(findings: Sequence[Finding]) -> list[FindingGroup]:
    """Findings grouped per block, code, severity and remedy, in order of first appearance."""
    buckets: dict[tuple[str, str, str, str], list[Finding]] = {}
    for f in findings:
        buckets.setdefault((f.block, f.code, f.severity, f.remedy), []).append(f)
    return [FindingGroup(block=block, code=code, severity=severity,
                         masks=tuple(f.mask for f in fs if f.mask),
                         message=merge_messages([f.message for f in fs]), remedy=remedy)
            for (block, code, severity, remedy), fs in buckets.items()]


def by_remedy(groups: Sequence[FindingGroup]) -> list[tuple[str, list[FindingGroup]]]:
    """(remedy, the groups that share it), each remedy once, in order of first appearance."""
    out: dict[str, list[FindingGroup]] = {}
    for g in groups:
        out.setdefault(g.remedy, []).append(g)
    return list(out.items())


def legend(columns: Sequence[str], extra: Sequence[str] = ()) -> str:
    """The legend line: "pos std: ...; std ratio: ..." for the columns and terms given that the
    glossary explains, in glossary order."""
    wanted = set(columns) | set(extra)
    return "; ".join(f"{term}: {text}" for term, text in GLOSSARY.items() if term in wanted)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verdict_line(result: CheckResult) -> str:
    """The last line: failed (which checkpoints, how many findings in how many blocks), passed
    with warnings below the gate, or passed and healthy."""
    n = len(result.verdicts)
    gate = f"--fail-on {result.fail_on}"
    bad = [v for v in result.verdicts if not v.healthy]
    if bad:
        names = ", ".join(Path(v.report.checkpoint.path or "model").name for v in bad)
        failing = sum(len(v.failing) for v in bad)
        blocks = sum(len(v.failing_blocks()) for v in bad)
        return (f"check failed: {len(bad)} of {_plural(n, 'checkpoint')} unhealthy at {gate} "
                f"({names}): {_plural(failing, 'finding')} in {_plural(blocks, 'block')}")
    # a passing gate is at warn or fail, so what it lets through are warnings (and infos)
    warned = [(v, f) for v in result.verdicts for f in v.findings() if f.severity == "warn"]
    if warned:
        blocks = len({(id(v), f.block) for v, f in warned})
        return (f"check passed with {_plural(len(warned), 'warning')} in "
                f"{_plural(blocks, 'block')} (warnings do not fail at {gate}; "
                f"{_plural(n, 'checkpoint')})")
    return f"check passed: {_plural(n, 'checkpoint')} healthy at {gate}"
