"""Where things go in the report pages: block order, anchors, file names, number formats.

Shared by the plots, the HTML page and the Markdown page so that all three agree. Nothing here
judges health: the statuses and thresholds are read from the frozen `Report`.
"""

from __future__ import annotations

import re
from typing import Any

from coordatt_diag.results import BlockReport, Finding, Report

_RANK = {"fail": 0, "warn": 1, "info": 2, "ok": 3}
#: Status colours of the plots and pages (ok green, warn amber, fail red).
STATUS_COLORS = {"ok": "#2e7d32", "warn": "#c77c00", "fail": "#c62828", "info": "#1565c0"}


def anchor(index: int) -> str:
    """The HTML id / Markdown anchor of the block at `index` (model order, from 1)."""
    return f"b{index:02d}"


def file_stem(index: int, name: str) -> str:
    """A file-name-safe stem for the block's plots: its index and a slug of its name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:48] or "model"
    return f"{anchor(index)}-{slug}"


def blocks_by_health(report: Report) -> list[tuple[int, BlockReport]]:
    """(index, block), failing blocks first, then warnings, then healthy ones; model order within."""
    indexed = list(enumerate(report.blocks, start=1))
    return sorted(indexed, key=lambda ib: (_RANK.get(ib[1].status, 3), ib[0]))


def all_findings(report: Report) -> list[Finding]:
    """Model-level findings, then each block's, most severe first (stable otherwise)."""
    found = list(report.findings) + [f for b in report.blocks for f in b.findings]
    return sorted(found, key=lambda f: _RANK.get(f.severity, 3))


def grouped_findings(report: Report) -> list[list[Finding]]:
    """`all_findings` grouped by severity, code and remedy (most severe first), so a remedy that
    applies to many blocks is given once on the page."""
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for f in all_findings(report):
        groups.setdefault((f.severity, f.code, f.remedy), []).append(f)
    return list(groups.values())


def mask_status(block: BlockReport, mask: str) -> str:
    """The most severe of the block's findings about `mask` ("ok" when there is none)."""
    levels = [_RANK[f.severity] for f in block.findings if f.mask == mask and f.severity in _RANK]
    if not levels:
        return "ok"
    return {0: "fail", 1: "warn"}.get(min(levels), "ok")


def block_thresholds(report: Report, name: str) -> dict[str, Any]:
    """The thresholds the report says were applied to the block called `name`."""
    th = {k: v for k, v in report.thresholds.items() if k not in ("blocks", "source")}
    for pattern, diff in (report.thresholds.get("blocks") or {}).items():
        try:
            if re.search(pattern, name):
                th.update(diff)
        except re.error:
            continue
    return th


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell ("-" when missing)."""
    return "-" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    """A share as a percentage ("-" when missing)."""
    return "-" if value is None else f"{value:.1%}"


def feature(block: BlockReport) -> str:
    """C x H x W of the block's input."""
    return "x".join(str(s) for s in block.feature) or "-"


def std_ratio(block: BlockReport) -> str:
    """The std ratio cell: mean (min over batches)."""
    r = block.std_ratio
    return "-" if r is None else f"{r.mean:.3f} (min {r.min:.3f})"


def smallest_std(block: BlockReport) -> float | None:
    """The smallest std among the block's masks (the one closest to collapse)."""
    stds = [m.std for m in block.masks.values() if m.std is not None]
    return min(stds) if stds else None


MASK_COLUMNS = ("mask", "mean", "std", "min", "max", "<=0.01", ">=0.99", "exact 0/1", "pos std",
                "chan std")


def mask_row(block: BlockReport, name: str) -> list[str]:
    """One row of a block's mask table, in `MASK_COLUMNS` order."""
    m = block.masks[name]
    return [name, fmt(m.mean), fmt(m.std, 4), fmt(m.min), fmt(m.max), pct(m.sat_low),
            pct(m.sat_high), pct(m.exact01), fmt(m.pos_std, 4), fmt(m.chan_std, 4)]


EFFECT_COLUMNS = ("masks replaced by", "output change", "top-1 same", "accuracy change")


def accuracy_change(drop: float | None) -> str:
    """An accuracy drop as the change it is: a drop of 5% is "-5.0%", a gain "+0.8%"."""
    return "-" if drop is None else f"{-drop:+.1%}"


def effect_rows(block: BlockReport) -> list[list[str]]:
    """A block's mask-effect rows (`--effect`), in `EFFECT_COLUMNS` order; [] when not measured."""
    effect = block.effect
    if effect is None:
        return []
    rows = []
    for label, ab in (("positional mean", effect.positional), ("constant", effect.constant)):
        if ab is None:
            continue
        rows.append([label, pct(ab.rel_l2), pct(ab.top1_agreement),
                     accuracy_change(ab.accuracy_drop)])
    return rows


def effect_note(report: Report) -> str:
    """The line under the mask-effect table: what was measured, on how many samples."""
    measured = [b.effect for b in report.blocks if b.effect is not None]
    if not measured:
        return ""
    e = measured[0]
    acc = f"; accuracy without replacement {e.accuracy:.1%}" if e.accuracy is not None else ""
    return (f"Each block's masks replaced, one block at a time, by their mean over positions "
            f"(per sample and channel) and by a constant; output change is the relative L2 "
            f"change of the model output over {e.samples} samples{acc}.")
