"""Renderers of a `Comparison`: a side-by-side table (one row per mask of each block: A, B and the
change of each statistic), the findings that appeared or went away, and the JSON document."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from coordatt_diag.reports.atomic import write_text
from coordatt_diag.reports.json_report import _clean
from coordatt_diag.results import Finding, display_name
from coordatt_diag.runs.compare import Change, Comparison

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}


def _cell(c: Change, digits: int = 4) -> str:
    a = "-" if c.a is None else f"{c.a:.{digits}f}"
    b = "-" if c.b is None else f"{c.b:.{digits}f}"
    if c.relative is not None:
        return f"{a} -> {b} ({c.relative:+.0%})"
    if c.delta is not None:
        return f"{a} -> {b} ({c.delta:+.{digits}f})"
    return f"{a} -> {b}"


def _status(a: str | None, b: str | None) -> Text:
    text = Text()
    text.append((a or "-").upper(), style=_STYLE.get(a or "", ""))
    text.append(" -> ")
    text.append((b or "-").upper(), style=_STYLE.get(b or "", ""))
    return text


def compare_table(comparison: Comparison, plain: bool) -> Table:
    """The side-by-side table."""
    table = Table(box=box.ASCII2 if plain else box.SIMPLE_HEAVY, header_style="bold",
                  pad_edge=False)
    for col in ("block", "mask", "mean A -> B", "std A -> B", "pos std A -> B",
                "std ratio A -> B", "status A -> B"):
        table.add_column(col, no_wrap=col in ("block", "status A -> B"))
    for b in comparison.blocks:
        masks: list[tuple[str, dict[str, Change] | None]] = list(b.masks.items()) or [("-", None)]
        for i, (kind, stats) in enumerate(masks):
            first = i == 0
            table.add_row(
                Text(display_name(b.name)) if first else Text(""),
                Text(kind),
                _cell(stats["mean"], 3) if stats else "-",
                _cell(stats["std"]) if stats else "-",
                _cell(stats["pos_std"]) if stats else "-",
                _cell(b.std_ratio, 3) if first else "",
                _status(b.status_a, b.status_b) if first else Text(""),
            )
    return table


def _finding_line(mark: str, f: Finding) -> Text:
    where = display_name(f.block) + (f" {f.mask}" if f.mask else "")
    line = Text(f"  {mark} ")
    line.append(f"{f.severity.upper():<4}", style=_STYLE.get(f.severity, ""))
    line.append(f" {where} [{f.code}]: {f.message}")
    return line


def render_compare(comparison: Comparison, console: Console) -> None:
    """Print the heading, the table, the changed findings and the notes."""
    c = comparison
    for tag, source, s in (("A", c.source_a, c.summary_a), ("B", c.source_b, c.summary_b)):
        line = Text(f"{tag}: {source}: {s.blocks} blocks, {s.ok} ok, {s.warn} warn, {s.fail} fail"
                    " -> ")
        line.append(s.status.upper(), style=_STYLE.get(s.status, ""))
        console.print(line)
    console.print(compare_table(c, console.no_color))
    appeared = [f for b in c.blocks for f in b.appeared] + list(c.appeared)
    resolved = [f for b in c.blocks for f in b.resolved] + list(c.resolved)
    if appeared:
        console.print(Text("Findings that appeared in B", style="bold"))
        for f in appeared:
            console.print(_finding_line("+", f))
    if resolved:
        console.print(Text("Findings that went away in B", style="bold"))
        for f in resolved:
            console.print(_finding_line("-", f))
    if not appeared and not resolved:
        console.print(Text("Same findings in A and B."))
    for note in c.notes:
        console.print(Text(f"note: {note}", style="dim"))


def compare_json(comparison: Comparison) -> str:
    """The comparison as indented JSON text (NaN and infinity become null)."""
    return json.dumps(_clean(comparison.to_dict()), indent=2, allow_nan=False) + "\n"


def write_compare_json(comparison: Comparison, path: Path) -> None:
    """Write the comparison JSON to `path` atomically."""
    write_text(path, compare_json(comparison))


def emit_compare(comparison: Comparison, *, json_out: str | None = None) -> None:
    """Write every output of `compare`: the table on stdout (or only the JSON with
    `json_out="-"`), and the JSON file."""
    from coordatt_diag.reports.terminal import make_console

    if json_out == "-":
        sys.stdout.write(compare_json(comparison))
        return
    render_compare(comparison, make_console())
    if json_out:
        write_compare_json(comparison, Path(json_out))
