"""Renderers of a `Comparison`: a side-by-side table (one row per mask of each block: A, B and the
change of each statistic), the findings that appeared or went away, and the JSON document."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from coordatt_diag.reports.atomic import write_text
from coordatt_diag.reports.json_report import _clean
from coordatt_diag.reports.terminal import STATUS_STYLE, fits, new_table, print_hanging, print_table, words
from coordatt_diag.reports.wording import group_findings
from coordatt_diag.results import Finding, display_name
from coordatt_diag.runs.compare import Change, Comparison


def _cell(c: Change, digits: int, arrow: str, wide: bool) -> str:
    a = "-" if c.a is None else f"{c.a:.{digits}f}"
    b = "-" if c.b is None else f"{c.b:.{digits}f}"
    change = ""
    if c.relative is not None:
        change = f"{c.relative:+.0%}"
    elif c.delta is not None:
        change = f"{c.delta:+.{digits}f}"
    if not change:
        return f"{a}{arrow}{b}"
    # narrow: the change on a line of its own, so that three statistics fit 80 columns
    return f"{a}{arrow}{b} ({change})" if wide else f"{a}{arrow}{b}\n{change}"


def _status(a: str | None, b: str | None, arrow: str) -> Text:
    text = Text()
    text.append((a or "-").upper(), style=STATUS_STYLE.get(a or "", ""))
    text.append(arrow)
    text.append((b or "-").upper(), style=STATUS_STYLE.get(b or "", ""))
    return text


def compare_table(comparison: Comparison, console: Console, wide: bool = True) -> Table:
    """The side-by-side table: A→B and the change of each statistic on one line (`wide`), or,
    for a narrow terminal, without the mean column and with each change under its values."""
    arrow = words(console, "→")
    table = new_table(console)
    columns = ["block", "mask"] + (["mean"] if wide else []) + ["std", "pos std", "std ratio",
                                                                 "status"]
    for col in columns:
        name = col if col in ("block", "mask") else f"{col} A{arrow}B"
        table.add_column(name, no_wrap=col != "block", overflow="fold",
                         justify="left" if col in ("block", "mask", "status") else "right")
    for b in comparison.blocks:
        masks: list[tuple[str, dict[str, Change] | None]] = list(b.masks.items()) or [("-", None)]
        for i, (kind, stats) in enumerate(masks):
            first = i == 0
            cells = [_cell(stats["mean"], 3, arrow, wide) if stats else "-"] if wide else []
            cells += [_cell(stats["std"], 4, arrow, wide) if stats else "-",
                      _cell(stats["pos_std"], 4, arrow, wide) if stats else "-",
                      _cell(b.std_ratio, 3, arrow, wide) if first else ""]
            table.add_row(Text(display_name(b.name)) if first else Text(""), Text(kind), *cells,
                          _status(b.status_a, b.status_b, arrow) if first else Text(""))
    return table


def _finding_rows(mark: str, findings: list[Finding],
                  console: Console) -> list[tuple[Text, Text]]:
    rows = []
    for g in group_findings(findings):
        tag = Text(f"  {mark} ")
        tag.append(f"{g.severity.upper():<4}", style=STATUS_STYLE.get(g.severity, ""))
        rows.append((tag, Text(words(console, f"{g.where} [{g.code}]: {g.message}"))))
    return rows


def render_compare(comparison: Comparison, console: Console, wide: bool | None = None) -> None:
    """Print the heading, the table, the changed findings and the notes.

    `wide`: the full table (True), the narrow one (False), or the full one when it fits (None).
    """
    c = comparison
    for tag, source, s in (("A", c.source_a, c.summary_a), ("B", c.source_b, c.summary_b)):
        line = Text(f"{tag}: {source}: {s.blocks} blocks, {s.ok} ok, {s.warn} warn, {s.fail} fail"
                    " -> ")
        line.append(s.status.upper(), style=STATUS_STYLE.get(s.status, ""))
        console.print(line)
    table = compare_table(c, console, wide=wide is not False)
    if wide is None and not fits(console, table):
        table = compare_table(c, console, wide=False)
    print_table(console, table)
    appeared = [f for b in c.blocks for f in b.appeared] + list(c.appeared)
    resolved = [f for b in c.blocks for f in b.resolved] + list(c.resolved)
    if appeared:
        console.print(Text("Findings that appeared in B", style="bold"))
        print_hanging(console, _finding_rows("+", appeared, console))
    if resolved:
        console.print(Text("Findings that went away in B", style="bold"))
        print_hanging(console, _finding_rows("-", resolved, console))
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


def emit_compare(comparison: Comparison, *, json_out: str | None = None,
                 wide: bool | None = None) -> None:
    """Write every output of `compare`: the table on stdout (or only the JSON with
    `json_out="-"`), and the JSON file."""
    from coordatt_diag.reports.terminal import make_console

    if json_out == "-":
        sys.stdout.write(compare_json(comparison))
        return
    render_compare(comparison, make_console(), wide=wide)
    if json_out:
        write_compare_json(comparison, Path(json_out))
