"""The terminal view of a report: a verdict in words, one row per mask of each block with a legend
under it, then the findings grouped per block and finding, each remedy once.

Below `WIDE_AT` columns (and in pipes, which rich sizes from `COLUMNS`, else 80) the table is
compact: block, mask, mean, std, pos std, std ratio, status, with the block's type and feature
size on the line under its name; `wide=True` (`--wide`) or a wider terminal shows every column.
No number is ever cut: numeric columns do not wrap, names fold, and a table that cannot fit is
printed wider than the terminal rather than truncated (`print_table`).

Colour only on a terminal and without `NO_COLOR`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import IO, Literal

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from coordatt_diag.reports.layout import accuracy_change
from coordatt_diag.reports.monitor_lines import monitor_lines
from coordatt_diag.reports.wording import ascii_text, by_remedy, group_findings, legend, verdict
from coordatt_diag.results import BlockReport, MaskStats, Report, display_name

#: The colour of each status and severity, shared by the terminal renderers.
STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}

#: Terminal width from which the full table is shown.
WIDE_AT = 120

#: A rule under the header only, in ASCII: what logs and pipes get (no vertical bars to pad out).
PLAIN_BOX = box.Box("    \n    \n -- \n    \n    \n -- \n    \n    \n", ascii=True)


def make_console(file: IO[str] | None = None, width: int | None = None) -> Console:
    """A console that writes colour only to a terminal and honours NO_COLOR.

    The width is the terminal's; in a pipe, `COLUMNS` or 80 (rich's rule), unless given.
    """
    out = file or sys.stdout
    tty = hasattr(out, "isatty") and out.isatty()
    plain = not tty or bool(os.environ.get("NO_COLOR"))
    return Console(file=out, no_color=plain, highlight=False, soft_wrap=False, width=width,
                   force_terminal=tty and not plain, emoji=False)


def table_box(console: Console) -> box.Box:
    """The table border: heavy header rule on a terminal, an ASCII rule in plain output."""
    return PLAIN_BOX if console.no_color else box.SIMPLE_HEAVY


def words(console: Console, text: str) -> str:
    """`text` as the console can print it (≈, — and → spelled in ASCII where needed)."""
    return ascii_text(text) if console.options.ascii_only else text


def new_table(console: Console, title: str | None = None) -> Table:
    """A table in the house layout: a rule under the header, one space between columns."""
    return Table(box=table_box(console), header_style="bold", pad_edge=False, show_edge=False,
                 collapse_padding=True, title=title, title_justify="left")


def _widest(console: Console, column: Column) -> int:
    options = console.options.update_width(1 << 16)
    return max((Measurement.get(console, options, cell).maximum
                for cell in (column.header, *column.cells)), default=0)


def _fold_names(console: Console, table: Table) -> None:
    """Narrow the columns that fold (block names) until the table fits, widest first, down to 12
    characters each: a long name wraps onto a second line instead of pushing the numbers out."""
    for column in sorted((c for c in table.columns if not c.no_wrap and c.overflow == "fold"),
                         key=lambda c: -_widest(console, c)):
        excess = _measure(console, table).minimum - console.width
        if excess <= 0:
            return
        widest = _widest(console, column)
        column.max_width = max(12, widest - excess)


def _measure(console: Console, table: Table) -> Measurement:
    """The table's width, its no-wrap columns pinned to their widest cell (rich measures every
    column by its longest word and would cut a no-wrap column to fit), measured without the
    console's width as a cap (Measurement.get clamps to it)."""
    options = console.options.update_width(1 << 16)
    for column in table.columns:
        if column.no_wrap:
            column.min_width = max(column.min_width or 0, _widest(console, column))
    return Measurement.get(console, options, table)


def fits(console: Console, table: Table) -> bool:
    """Whether the table fits the console without wrapping or cutting anything."""
    return _measure(console, table).maximum <= console.width


def print_table(console: Console, table: Table) -> None:
    """Print a table without cutting a cell: when its narrowest layout is wider than the console,
    the lines run past the edge instead of numbers becoming '…'."""
    _fold_names(console, table)
    need = _measure(console, table).minimum
    if need <= console.width:
        console.print(table)
        return
    size = console.size
    console.size = (need, size.height)  # width alone is ignored while the height is unset
    try:
        console.print(table, crop=False)
    finally:
        console.size = size


def print_hanging(console: Console, rows: Sequence[tuple[Text, Text]]) -> None:
    """Rows of (tag, text): the text wraps under itself, not under the tag (a hanging indent);
    no line is padded out to the console's width."""
    indent = max((tag.cell_len for tag, _ in rows), default=0) + 1
    width = max(console.width - indent, 20)
    for tag, text in rows:
        for i, line in enumerate(text.wrap(console, width, overflow="fold")):
            head = tag.copy() if i == 0 else Text()
            head.pad_right(indent - head.cell_len)
            line.rstrip()
            console.print(head + line, no_wrap=True, overflow="ignore", crop=False)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _type_line(b: BlockReport) -> str:
    return f"{b.type} {'x'.join(map(str, b.feature))}"


Heading = tuple[str, Literal["left", "right"]]
_COMPACT: tuple[Heading, ...] = (("block", "left"), ("mask", "left"), ("mean", "right"),
                                ("std", "right"), ("pos std", "right"), ("std ratio", "right"),
                                ("status", "left"))
_WIDE: tuple[Heading, ...] = (("block", "left"), ("type", "left"), ("feature", "left"),
                             ("mask", "left"), ("mean", "right"), ("std", "right"),
                             ("min", "right"), ("max", "right"), ("sat<=.01", "right"),
                             ("sat>=.99", "right"), ("pos std", "right"), ("std ratio", "right"),
                             ("status", "left"))


def table_columns(wide: bool) -> list[str]:
    """The column names of the block table, compact or wide."""
    return [name for name, _ in (_WIDE if wide else _COMPACT)]


def _mask_cells(m: MaskStats | None, wide: bool) -> list[str]:
    cells = [_fmt(m.mean if m else None), _fmt(m.std if m else None, 4)]
    if wide:
        cells += [_fmt(m.min if m else None), _fmt(m.max if m else None),
                  _pct(m.sat_low if m else None), _pct(m.sat_high if m else None)]
    return cells + [_fmt(m.pos_std if m else None, 4)]


def blocks_table(report: Report, console: Console, wide: bool = False) -> Table:
    """The per-block table: a row per mask; compact (type and feature size under the block's
    name) or wide (every column)."""
    table = new_table(console)
    for name, justify in (_WIDE if wide else _COMPACT):
        # compact: names fold when they must; wide: nothing wraps (it is chosen when it fits)
        fold = not wide and name == "block"
        table.add_column(name, justify=justify, no_wrap=not fold,
                         overflow="fold" if fold else "ellipsis")
    for b in report.blocks:
        masks: list[tuple[str, MaskStats | None]] = list(b.masks.items()) or [("-", None)]
        ratio = "-" if b.std_ratio is None else f"{b.std_ratio.mean:.3f}"
        status = Text(b.status.upper(), style=STATUS_STYLE[b.status])
        for i, (kind, m) in enumerate(masks):
            first = i == 0
            if wide:
                head = [Text(display_name(b.name)) if first else Text(""),
                        Text(b.type) if first else Text(""),
                        Text("x".join(map(str, b.feature))) if first else Text("")]
            elif first:
                label = Text(display_name(b.name))
                if len(masks) == 1:
                    label.append("\n" + _type_line(b), style="dim")
                head = [label]
            else:
                head = [Text(_type_line(b), style="dim") if i == 1 else Text("")]
            table.add_row(*head, Text(kind), *_mask_cells(m, wide),
                          ratio if first else "", status if first else Text(""))
    return table


def effect_table(report: Report, console: Console) -> Table | None:
    """The mask effect of each block (`--effect`), or None when it was not measured."""
    measured = [b for b in report.blocks if b.effect is not None]
    if not measured:
        return None
    table = new_table(console, "Mask effect: output change with the masks replaced")
    table.add_column("block", overflow="fold")
    table.add_column("masks replaced by", overflow="fold")
    table.add_column("output change", justify="right", no_wrap=True)
    table.add_column("top-1 same", justify="right", no_wrap=True)
    table.add_column("accuracy change", justify="right", no_wrap=True)
    for b in measured:
        effect = b.effect
        assert effect is not None
        rows = (("positional mean", effect.positional), ("constant", effect.constant))
        first = True
        for label, ab in rows:
            if ab is None:
                continue
            table.add_row(
                Text(display_name(b.name)) if first else Text(""), label,
                _pct(ab.rel_l2), _pct(ab.top1_agreement),
                accuracy_change(ab.accuracy_drop),
            )
            first = False
    return table


#: Title of the table of what blocks expose about themselves (`extra["monitor"]`).
INTERNALS_TITLE = "Block internals: learned settings and head weights"


def monitor_table(report: Report, console: Console) -> Table | None:
    """What blocks with a monitor expose (`extra["monitor"]`: alpha, temperature, router shares,
    scale clamp, head weight std), a row per part, or None without any."""
    rows = [(b, part, line) for b in report.blocks for part, line in monitor_lines(b)]
    if not rows:
        return None
    table = new_table(console)
    table.add_column("block", overflow="fold")
    table.add_column("part", overflow="fold")
    table.add_column("values", overflow="fold")
    last = None
    for b, part, line in rows:
        table.add_row(Text(display_name(b.name)) if b is not last else Text(""),
                      Text(part or "(block)"), Text(line))
        last = b
    return table


def render_findings(report: Report, console: Console) -> None:
    """The findings grouped per block and finding (a_h and a_w on one line), each remedy printed
    once under the findings it answers, wrapped lines indented under their text."""
    findings = [f for b in report.blocks for f in b.findings] + list(report.findings)
    if not findings:
        return
    console.print(Text("Findings", style="bold"))
    rows: list[tuple[Text, Text]] = []
    docs = {f.code: f.doc for f in findings if f.doc}
    for remedy, groups in by_remedy(group_findings(findings)):
        pages = list(dict.fromkeys(docs[g.code] for g in groups if g.code in docs))
        if pages:
            remedy = f"{remedy} (explained in {', '.join(pages)})"
        for g in groups:
            tag = Text(f"{g.severity.upper():<4}", style=STATUS_STYLE[g.severity])
            rows.append((tag, Text(words(console, f"{g.where} [{g.code}]: {g.message}"))))
        rows.append((Text("  ->"), Text(words(console, f"remedy: {remedy}"),
                                        style="" if console.no_color else "italic")))
    print_hanging(console, rows)


def _legend_terms(report: Report, has_monitor: bool) -> list[str]:
    terms = []
    if has_monitor and any("head std" in line for b in report.blocks
                           for _, line in monitor_lines(b)):
        terms.append("head std")
    messages = [f.message for b in report.blocks for f in b.findings]
    if any("weight RMS" in m for m in messages):
        terms.append("weight RMS")
    return terms


def render(report: Report, console: Console, wide: bool | None = None) -> None:
    """Print the verdict, the table and its legend, the other tables, the findings and a summary
    line.

    Args:
        report: the report.
        console: where to print (`make_console`).
        wide: every column (True), the compact table (False), or by the console width (None: wide
            from `WIDE_AT` columns).
    """
    if wide is None:
        wide = console.width >= WIDE_AT and fits(console, blocks_table(report, console, True))
    ck = report.checkpoint
    head = f"{ck.path or 'model'}" + (f" ({ck.epoch_label})" if ck.epoch_label else "")
    inp = report.inputs
    console.print(Text(f"{head}: {len(report.blocks)} attention blocks, "
                       f"{inp.samples} samples from {inp.source}"
                       + (f" ({inp.skipped} unreadable skipped)" if inp.skipped else "")))
    print_hanging(console, [(Text("Verdict:", style="bold"),
                             Text(words(console, verdict(report)),
                                  style=STATUS_STYLE[report.summary.status]))])
    print_table(console, blocks_table(report, console, wide))
    monitor = monitor_table(report, console)
    text = legend(table_columns(wide), _legend_terms(report, monitor is not None))
    print_hanging(console, [(Text("Legend:", style="dim"), Text(words(console, text),
                                                                 style="dim"))])
    if monitor is not None:
        console.print(Text(INTERNALS_TITLE, style="bold"))
        print_table(console, monitor)
    effects = effect_table(report, console)
    if effects is not None:
        print_table(console, effects)
    render_findings(report, console)
    s = report.summary
    summary = Text(f"{s.blocks} blocks: {s.ok} ok, {s.warn} warn, {s.fail} fail -> ")
    summary.append(s.status.upper(), style=STATUS_STYLE[s.status])
    console.print(summary)
    if inp.note:
        console.print(Text(f"note: {inp.note}", style="dim"))
