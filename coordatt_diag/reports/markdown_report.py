"""`report.md`: the report as GitHub-flavoured Markdown, for a pull request or an issue.

The same content and order as `index.html`; the figures are files beside it (`plots/...`, relative
links), so the folder can be committed or attached as it is. Every string from the model or the
user is escaped (`md_escape`): Markdown's inline punctuation gets a backslash, `<`, `>` and `&` become
entities, `|` cannot break a table, a newline cannot start a new block.
"""

from __future__ import annotations

import re

from coordatt_diag.reports.layout import (
    EFFECT_COLUMNS,
    MASK_COLUMNS,
    anchor,
    blocks_by_health,
    effect_note,
    effect_rows,
    feature,
    fmt,
    grouped_findings,
    mask_row,
    smallest_std,
    std_ratio,
)
from coordatt_diag.reports.monitor_lines import monitor_lines
from coordatt_diag.reports.plots import Plot, PlotSet
from coordatt_diag.results import BlockReport, Finding, Report, display_name

# Emphasis, code, links, tables and strike-through; the texts never start a line, so list and
# heading markers need no escape, and with `[` `]` escaped no `(...)` can become a link target.
_PUNCT = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: object) -> str:
    """`text` as literal Markdown inline text (safe in a table cell and in a heading)."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _PUNCT.sub(r"\\\1", s)
    return re.sub(r"\s*[\r\n]+\s*", " ", s)


def _code(text: object) -> str:
    # escaped text, not a code span: a code span cannot hold every string (backticks, pipes)
    return md_escape(text)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return [_row([md_escape(h) for h in header]), _row(align)] + [_row(r) for r in rows]


def _img(plot: Plot, folder: str) -> str:
    return f"![{md_escape(plot.alt)}]({folder}/{plot.file})"


def _doc(f: Finding) -> str:
    return f" (explained in {_code(f.doc)})" if f.doc else ""


def _finding(f: Finding) -> str:
    mask = f"{_code(f.mask)} " if f.mask else ""
    return (f"- **{md_escape(f.severity.upper())}** {mask}\\[{md_escape(f.code)}\\]: "
            f"{md_escape(f.message)}  \n  remedy: {md_escape(f.remedy)}{_doc(f)}")


def _finding_groups(report: Report, index_of: dict[str, int]) -> list[str]:
    out = []
    for group in grouped_findings(report):
        f = group[0]
        blocks = len({g.block for g in group})
        count = f"{len(group)} findings in {blocks} blocks" if len(group) > 1 else "1 finding"
        out.append(f"- **{md_escape(f.severity.upper())}** \\[{md_escape(f.code)}\\] {count}  \n"
                   f"  remedy: {md_escape(f.remedy)}{_doc(f)}")
        for g in group:
            if g.block in index_of:
                where = f"[{_code(display_name(g.block))}](#{anchor(index_of[g.block])})"
            else:
                where = _code(g.block) if g.block else "model"
            mask = f" {_code(g.mask)}" if g.mask else ""
            out.append(f"  - {where}{mask}: {md_escape(g.message)}")
    return out


def _effect_section(report: Report, order: list[tuple[int, BlockReport]]) -> list[str]:
    measured = [(i, b, effect_rows(b)) for i, b in order if b.effect is not None]
    if not measured:
        return []
    rows = []
    for i, b, cells in measured:
        for k, row in enumerate(cells):
            name = f"[{_code(display_name(b.name))}](#{anchor(i)})" if k == 0 else ""
            rows.append([name] + [md_escape(c) for c in row])
    return (['<a id="effect"></a>', "", "## Mask effect", "", f"*{md_escape(effect_note(report))}*",
             ""] + _table(["block", *EFFECT_COLUMNS], rows, right={2, 3, 4}) + [""])


def _block(i: int, b: BlockReport, plots: list[Plot], folder: str) -> list[str]:
    facts = [f"type {_code(b.type)}", f"kind {md_escape(b.kind)}",
             f"feature {md_escape(feature(b))}", f"{b.params:,} parameters",
             f"std ratio {md_escape(std_ratio(b))}",
             "identity path" if b.identity_path else "multiplicative"]
    if b.weight_rms is not None:
        facts.append(f"weight RMS {b.weight_rms:.4g}")
    out = [f'<a id="{anchor(i)}"></a>', "",
           f"### {i}. {_code(display_name(b.name))}: {md_escape(b.status.upper())}", "",
           ", ".join(facts), ""]
    if b.masks:
        rows = [[md_escape(c) for c in mask_row(b, name)] for name in b.masks]
        out += _table(list(MASK_COLUMNS), rows, right=set(range(1, len(MASK_COLUMNS))))
        out.append("")
    monitor = monitor_lines(b)
    if monitor:
        out += [f"- monitor {_code(part or '(block)')}: {md_escape(line)}"
                for part, line in monitor] + [""]
    if b.findings:
        out += [_finding(f) for f in b.findings]
    else:
        out.append("No findings: the masks look alive.")
    out.append("")
    for p in plots:
        out += [_img(p, folder), ""]
    out += ["[back to the table](#blocks)", ""]
    return out


def render_markdown(report: Report, plots: PlotSet, overlay_note: str,
                    folder: str = "plots") -> str:
    """The whole Markdown page.

    Args:
        report: the frozen report.
        plots: its figures (only their file names are used: the files lie in `folder`).
        overlay_note: the line shown in the overlays section.
        folder: the figures' folder relative to the page.

    Returns:
        The Markdown text.
    """
    order = blocks_by_health(report)
    index_of = {b.name: i for i, b in enumerate(report.blocks, start=1)}
    ck, inp, s = report.checkpoint, report.inputs, report.summary
    out = ["# coordatt-diag report", ""]
    ck_line = f"checkpoint {_code(ck.path) if ck.path else 'in-memory model'} " \
              f"(format {md_escape(ck.format)}"
    if ck.epoch_label:
        ck_line += f", {ck.epoch_label}"
    if ck.sha256:
        ck_line += f", sha256 {md_escape(ck.sha256[:16])}"
    out.append(ck_line + ")  ")
    src = md_escape(inp.source) + (f" {_code(inp.path)}" if inp.path else "")
    in_line = (f"inputs: {inp.samples} samples in {inp.batches} batches from {src}, shape "
               f"{md_escape('x'.join(str(x) for x in inp.shape))}")
    if inp.normalize:
        in_line += f", normalize {md_escape(inp.normalize)}"
    if inp.skipped:
        in_line += f", {inp.skipped} unreadable skipped"
    out.append(in_line + "  ")
    out.append(f"{md_escape(report.tool.get('name', 'coordatt-diag'))} "
               f"{md_escape(report.tool.get('version', ''))}, torch "
               f"{md_escape(report.tool.get('torch', ''))}")
    out.append("")
    if inp.note:
        out += [f"*note: {md_escape(inp.note)}*", ""]
    out += ["## Summary", "",
            f"**{md_escape(s.status.upper())}**: {s.blocks} attention blocks: {s.ok} ok, "
            f"{s.warn} warn, {s.fail} fail.", "", "## Findings", ""]
    if any(b.findings for b in report.blocks) or report.findings:
        out += _finding_groups(report, index_of)
    else:
        out.append("No findings: every mask looks alive.")
    out.append("")
    if plots.summary is not None:
        out += [_img(plots.summary, folder), ""]
    out += ['<a id="blocks"></a>', "", "## Blocks", "",
            "Failing blocks first, then warnings, then healthy blocks; # is the position in the "
            "model.", ""]
    rows = []
    for i, b in order:
        rows.append([str(i), f"[{_code(display_name(b.name))}](#{anchor(i)})", _code(b.type),
                     md_escape(b.kind), md_escape(feature(b)),
                     md_escape(", ".join(b.masks) or "-"), md_escape(fmt(smallest_std(b), 4)),
                     md_escape(std_ratio(b)), str(len(b.findings)),
                     f"**{md_escape(b.status.upper())}**"])
    out += _table(["#", "block", "type", "kind", "feature", "masks", "smallest std", "std ratio",
                   "findings", "status"], rows, right={0, 6, 7, 8})
    out.append("")
    out += _effect_section(report, order)
    out += ["## Overlays", "", f"*{md_escape(overlay_note)}*", ""]
    for p in plots.grid:
        out += [_img(p, folder), ""]
    out += ["## Blocks in detail", ""]
    for i, b in order:
        out += _block(i, b, plots.blocks.get(b.name, []), folder)
    return "\n".join(out).rstrip() + "\n"
