"""Renderers of a `Trend`: a table per block (one row per checkpoint), the JSON document, and a
PNG line plot per statistic (one line per block and mask). matplotlib is imported inside
`write_plots` (Agg canvas, no pyplot state), so importing this module stays light.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from coordatt_diag.reports.atomic import write_bytes, write_text
from coordatt_diag.reports.json_report import _clean
from coordatt_diag.reports.terminal import new_table, print_hanging, print_table, words
from coordatt_diag.reports.wording import legend
from coordatt_diag.results import display_name
from coordatt_diag.runs.trend import Trend

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}

#: file name -> (title, y label) of the plots `write_plots` writes.
PLOTS = {
    "mask_std.png": ("Mask std per checkpoint", "mask std"),
    "pos_std.png": ("Positional std per checkpoint", "positional std"),
    "std_ratio.png": ("Std ratio per checkpoint", "std ratio (out / in)"),
}


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def block_table(trend: Trend, index: int, console: Console) -> Table:
    """The table of one block: a row per checkpoint, a column per mask statistic (numbers never
    wrap; where the table is wider than the terminal, the number columns' headers go onto two
    lines and the labels break between words)."""
    table = _block_table(trend, index, console, fold=False)
    natural = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    return table if natural <= console.width else _block_table(trend, index, console, fold=True)


def _header(text: str, fold: bool) -> str:
    """`text` on one line, or its last word on a second line ("a_h pos" / "std")."""
    head, _, last = text.rpartition(" ")
    return f"{head}\n{last}" if fold and head else text


def _block_table(trend: Trend, index: int, console: Console, fold: bool) -> Table:
    b = trend.blocks[index]
    table = new_table(console)
    # wide enough for the longest word of a label ("(digits_collapsed.pt)"), so a narrow terminal
    # breaks labels between words, not inside a file name
    longest = max((len(w) for p in trend.points for w in p.label.split()), default=10)
    table.add_column("checkpoint", overflow="fold", min_width=min(longest, console.width // 3))
    for kind in b.masks:
        table.add_column(_header(f"{kind} std", fold), justify="right", min_width=6,
                         no_wrap=True)
    for kind, s in b.masks.items():
        if any(v is not None for v in s.pos_std):
            table.add_column(_header(f"{kind} pos std", fold), justify="right", min_width=6,
                             no_wrap=True)
    table.add_column(_header("std ratio", fold), justify="right", min_width=5, no_wrap=True)
    table.add_column("status", min_width=4, no_wrap=True)
    for i, point in enumerate(trend.points):
        row: list[str | Text] = [point.label]
        row += [_fmt(s.std[i]) for s in b.masks.values()]
        row += [_fmt(s.pos_std[i]) for s in b.masks.values()
                if any(v is not None for v in s.pos_std)]
        row.append(_fmt(b.std_ratio[i], 3))
        status = b.status[i]
        row.append(Text("-") if status is None
                   else Text(status.upper(), style=_STYLE.get(status, "")))
        table.add_row(*row)
    return table


def render_trend(trend: Trend, console: Console) -> None:
    """Print the checkpoints in order, then one table per block."""
    inp = trend.inputs
    console.print(Text(f"{len(trend.points)} checkpoints, {len(trend.blocks)} attention blocks, "
                       f"{inp.samples} samples from {inp.source} (the same for every checkpoint)"))
    width = max(len(p.label) for p in trend.points)
    for p in trend.points:
        line = Text(f"  {p.label:<{width}}  {p.path} ")
        line.append(p.status.upper(), style=_STYLE.get(p.status, ""))
        console.print(line)
    for i, b in enumerate(trend.blocks):
        console.print(Text(f"{display_name(b.name)} ({b.type})", style="bold"))
        print_table(console, block_table(trend, i, console))
    print_hanging(console, [(Text("Legend:", style="dim"),
                             Text(words(console, legend(["std", "pos std", "std ratio"])),
                                  style="dim"))])
    if trend.first_seen:
        console.print(Text("findings, where each first appeared:"))
        for f in trend.first_seen:
            mask = f" {f.mask}" if f.mask else ""
            line = Text(f"  {f.label:<12} {display_name(f.block)}{mask} {f.code} ")
            line.append(f.severity, style=_STYLE.get(f.severity, ""))
            console.print(line)
    if inp.note:
        console.print(Text(f"note: {inp.note}", style="dim"))


def trend_json(trend: Trend) -> str:
    """The trend as indented JSON text (NaN and infinity become null)."""
    return json.dumps(_clean(trend.to_dict()), indent=2, allow_nan=False) + "\n"


def write_trend_json(trend: Trend, path: Path) -> None:
    """Write the trend JSON to `path` atomically."""
    write_text(path, trend_json(trend))


def _series(trend: Trend, stat: str) -> list[tuple[str, list[float | None]]]:
    out: list[tuple[str, list[float | None]]] = []
    for b in trend.blocks:
        name = display_name(b.name)
        if stat == "std_ratio":
            out.append((name, list(b.std_ratio)))
            continue
        for kind, s in b.masks.items():
            values = s.std if stat == "mask_std" else s.pos_std
            if any(v is not None for v in values):
                out.append((f"{name} {kind}", list(values)))
    return out


def _guides(trend: Trend, stat: str) -> list[tuple[float, str]]:
    th = trend.thresholds
    keys = {"mask_std": ("near_constant_warn", "near_constant_fail"),
            "pos_std": ("position_blind_pos_std",), "std_ratio": ()}[stat]
    return [(float(th[k]), k) for k in keys if isinstance(th.get(k), (int, float))]


def _first_seen_marks(trend: Trend, xs: list[float]) -> list[tuple[float, str]]:
    """(x, text) for each checkpoint where findings first appeared: their block, mask and code."""
    by_point: dict[int, list[str]] = {}
    for f in trend.first_seen:
        mask = f" {f.mask}" if f.mask else ""
        by_point.setdefault(f.point, []).append(f"{display_name(f.block)}{mask} {f.code}")
    marks = []
    for point, names in sorted(by_point.items()):
        shown = names[:4] + ([f"+{len(names) - 4} more"] if len(names) > 4 else [])
        marks.append((xs[point], "\n".join(shown)))
    return marks


def write_plots(trend: Trend, out_dir: Path) -> list[Path]:
    """Write `mask_std.png`, `pos_std.png` and `std_ratio.png` into `out_dir` (created; staged
    with the command's other outputs, `coordatt_diag.reports.atomic`).

    Each plot has one line per block (and mask), over the epochs when every checkpoint records
    its own epoch, else over the checkpoints in order (labelled); dashed lines mark the health
    thresholds, dotted red lines the checkpoints where findings first appeared (named beside them).

    Returns:
        The files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if trend.by_epoch:
        xs: list[float] = [float(p.epoch) for p in trend.points if p.epoch is not None]
        xlabel = "epoch"
    else:
        xs = [float(i) for i in range(len(trend.points))]
        xlabel = "checkpoint, in epoch order" if any(p.epoch is not None
                                                     for p in trend.points) else "checkpoint"
    written = []
    for name, (title, ylabel) in PLOTS.items():
        stat = name.removesuffix(".png")
        fig = Figure(figsize=(8, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        lines = _series(trend, stat)
        for label, values in lines:
            pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                        linewidth=1.5, label=label)
        for value, label in _guides(trend, stat):
            ax.axhline(value, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(label, (xs[0] if xs else 0.0, value), fontsize=7, color="grey",
                        xytext=(2, 2), textcoords="offset points")
        for x, text in _first_seen_marks(trend, xs):
            ax.axvline(x, color="tab:red", linestyle=":", linewidth=1.0)
            ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                        color="tab:red", xytext=(-2, -3), textcoords="offset points", va="top",
                        ha="right", rotation=90)
        by_label = dict(lines)
        for f in trend.first_seen:  # ring the point of the mask the finding is about
            series = by_label.get(f"{display_name(f.block)} {f.mask}") if f.mask else None
            ringed = series[f.point] if series is not None else None
            if ringed is not None:
                ax.plot([xs[f.point]], [ringed], marker="o", markersize=9,
                        markerfacecolor="none", markeredgecolor="tab:red", linestyle="none")
        if not trend.by_epoch:
            ax.set_xticks(xs)
            ax.set_xticklabels([p.label for p in trend.points], rotation=30, ha="right",
                               fontsize=7)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=7, loc="best", ncol=2 if len(lines) > 8 else 1)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        path = out_dir / name
        write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def emit_trend(trend: Trend, *, json_out: str | None = None, out_dir: Path | None = None) -> None:
    """Write every output of `trend`: the tables on stdout (or only the JSON with
    `json_out="-"`), the JSON file, and the plots into `out_dir` (listed on stderr)."""
    from coordatt_diag.reports.terminal import make_console

    if json_out == "-":
        sys.stdout.write(trend_json(trend))
    else:
        render_trend(trend, make_console())
        if json_out:
            write_trend_json(trend, Path(json_out))
    if out_dir is not None:
        for path in write_plots(trend, out_dir):
            sys.stderr.write(f"wrote {path}\n")
