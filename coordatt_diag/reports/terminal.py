"""The terminal view of a report: one row per mask of each block, then the findings.

Colour only on a terminal and without `NO_COLOR`; plain ASCII tables otherwise (CI logs).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from coordatt_diag.reports.monitor_lines import monitor_lines
from coordatt_diag.results import MaskStats, Report, display_name

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}


def make_console(file: IO[str] | None = None, width: int | None = None) -> Console:
    """A console that writes colour only to a terminal and honours NO_COLOR."""
    out = file or sys.stdout
    tty = hasattr(out, "isatty") and out.isatty()
    plain = not tty or bool(os.environ.get("NO_COLOR"))
    return Console(file=out, no_color=plain, highlight=False, soft_wrap=False,
                   width=width or (None if tty else 160), force_terminal=tty and not plain,
                   emoji=False)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def blocks_table(report: Report, plain: bool) -> Table:
    """The per-block table."""
    table = Table(box=box.ASCII2 if plain else box.SIMPLE_HEAVY, show_lines=False,
                  header_style="bold", pad_edge=False)
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("block", "left"), ("type", "left"), ("feature", "left"),
                         ("mask", "left"), ("mean", "right"), ("std", "right"),
                         ("min", "right"), ("max", "right"), ("sat<=.01", "right"),
                         ("sat>=.99", "right"), ("pos std", "right"), ("std ratio", "right"),
                         ("status", "left"))
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col in ("block", "status"))
    for b in report.blocks:
        ratio = "-" if b.std_ratio is None else f"{b.std_ratio.mean:.3f}"
        first = True
        masks: list[tuple[str, MaskStats | None]] = list(b.masks.items()) or [("-", None)]
        for name, m in masks:
            table.add_row(
                Text(display_name(b.name)) if first else Text(""),
                Text(b.type) if first else Text(""),
                Text("x".join(map(str, b.feature))) if first else Text(""),
                Text(name),
                _fmt(m.mean if m else None), _fmt(m.std if m else None, 4),
                _fmt(m.min if m else None), _fmt(m.max if m else None),
                "-" if m is None else f"{m.sat_low:.1%}", "-" if m is None else f"{m.sat_high:.1%}",
                _fmt(m.pos_std if m else None, 4),
                ratio if first else "",
                Text(b.status.upper(), style=_STYLE[b.status]) if first else Text(""),
            )
            first = False
    return table


def effect_table(report: Report, plain: bool) -> Table | None:
    """The mask effect of each block (`--effect`), or None when it was not measured."""
    measured = [b for b in report.blocks if b.effect is not None]
    if not measured:
        return None
    table = Table(box=box.ASCII2 if plain else box.SIMPLE_HEAVY, header_style="bold",
                  pad_edge=False, title="Mask effect: output change with the masks replaced",
                  title_justify="left")
    table.add_column("block", no_wrap=True)
    table.add_column("masks replaced by")
    table.add_column("output change", justify="right")
    table.add_column("top-1 same", justify="right")
    table.add_column("accuracy drop", justify="right")
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
                "-" if ab.rel_l2 is None else f"{ab.rel_l2:.1%}",
                "-" if ab.top1_agreement is None else f"{ab.top1_agreement:.1%}",
                "-" if ab.accuracy_drop is None else f"{ab.accuracy_drop:+.1%}",
            )
            first = False
    return table


def monitor_table(report: Report, plain: bool) -> Table | None:
    """What the seed blocks expose (`extra["monitor"]`), a row per part, or None without any."""
    rows = [(b, part, line) for b in report.blocks for part, line in monitor_lines(b)]
    if not rows:
        return None
    table = Table(box=box.ASCII2 if plain else box.SIMPLE_HEAVY, header_style="bold",
                  pad_edge=False, title="Seed block monitor", title_justify="left")
    table.add_column("block", no_wrap=True)
    table.add_column("part", no_wrap=True)
    table.add_column("values")
    last = None
    for b, part, line in rows:
        table.add_row(Text(display_name(b.name)) if b is not last else Text(""),
                      Text(part or "(block)"), Text(line))
        last = b
    return table


def render(report: Report, console: Console) -> None:
    """Print the table, the findings and a summary line."""
    plain = console.no_color
    ck = report.checkpoint
    head = f"{ck.path or 'model'}" + (f" ({ck.epoch_label})" if ck.epoch_label else "")
    inp = report.inputs
    console.print(Text(f"{head}: {len(report.blocks)} attention blocks, "
                       f"{inp.samples} samples from {inp.source}"
                       + (f" ({inp.skipped} unreadable skipped)" if inp.skipped else "")))
    console.print(blocks_table(report, plain))
    monitor = monitor_table(report, plain)
    if monitor is not None:
        console.print(monitor)
    effects = effect_table(report, plain)
    if effects is not None:
        console.print(effects)
    findings = [f for b in report.blocks for f in b.findings] + list(report.findings)
    if findings:
        console.print(Text("Findings", style="bold"))
        for f in findings:
            where = display_name(f.block) + (f" {f.mask}" if f.mask else "")
            line = Text()
            line.append(f"{f.severity.upper():<4} ", style=_STYLE[f.severity])
            line.append(f"{where} [{f.code}]: {f.message}")
            # in logs a finding stays on one line, whatever the width
            console.print(line, soft_wrap=plain)
            console.print(Text(f"     remedy: {f.remedy}"), soft_wrap=plain)
    s = report.summary
    summary = Text(f"{s.blocks} blocks: {s.ok} ok, {s.warn} warn, {s.fail} fail -> ")
    summary.append(s.status.upper(), style=_STYLE[s.status])
    console.print(summary)
    if inp.note:
        console.print(Text(f"note: {inp.note}", style="dim"))
