"""`index.html`: the report as one self-contained page.

Everything is in the file: the style sheet is inline, the figures are data URIs (base64 PNG or
SVG), there are no scripts, fonts or links to the network, so the page opens from disk, from a CI
artifact or an e-mail attachment. Every string that comes from the model or the user (block
names, class names, finding messages, paths) goes through `html.escape`.

Order: summary and findings first, then the model figure, the block table (the table of
contents: failing blocks first), the mask effect (when measured), the overlays, then one section
per block in the same order.
"""

from __future__ import annotations

import base64
import html

from coordatt_diag.reports.layout import (
    EFFECT_COLUMNS,
    MASK_COLUMNS,
    STATUS_COLORS,
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

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1d1d1f; background: #fff; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 0 0 6px; word-break: break-all; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 12.5px; }
.meta { color: #555; margin: 2px 0; word-break: break-all; }
.note { color: #555; font-style: italic; }
.badge { display: inline-block; min-width: 38px; text-align: center; border-radius: 4px;
  padding: 0 6px; color: #fff; font-weight: 600; font-size: 12px; vertical-align: middle; }
.badge.ok { background: var(--ok); } .badge.warn { background: var(--warn); }
.badge.fail { background: var(--fail); } .badge.info { background: var(--info); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { overflow-wrap: anywhere; max-width: 360px; }
tr.fail td:first-child { border-left: 4px solid var(--fail); }
tr.warn td:first-child { border-left: 4px solid var(--warn); }
ul.findings { padding-left: 20px; margin: 6px 0; }
ul.findings li { margin: 4px 0; }
ul.findings ul { margin: 2px 0 6px; padding-left: 18px; }
.remedy { color: #333; }
.plots { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: flex-start; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #666; font-size: 12px; }
section.block { border: 1px solid #e3e3e3; border-radius: 6px; padding: 12px 14px;
  margin: 14px 0; }
section.block.fail { border-left: 5px solid var(--fail); }
section.block.warn { border-left: 5px solid var(--warn); }
a { color: #1558b0; text-decoration: none; } a:hover { text-decoration: underline; }
.top { font-size: 12px; float: right; }
/* Narrow windows (a phone, a side-by-side review at 700 px): the block and mask tables reflow
   into one card per row, each cell on its own line under its column name, so no column is cut
   off; the wider effect table scrolls sideways inside its box. */
@media (max-width: 820px) {
  main { padding: 10px 12px 32px; }
  table.reflow, table.reflow tbody, table.reflow tr, table.reflow td { display: block; }
  table.reflow { border: 0; width: 100%; }
  table.reflow thead { display: none; }
  table.reflow tr { border: 1px solid #ddd; border-radius: 6px; margin: 0 0 8px;
    padding: 4px 8px; }
  table.reflow tr.fail { border-left: 5px solid var(--fail); }
  table.reflow tr.warn { border-left: 5px solid var(--warn); }
  table.reflow td, table.reflow td.num, table.reflow td.name { border: 0; padding: 1px 0;
    display: flex; justify-content: space-between; gap: 12px; max-width: none;
    text-align: right; white-space: normal; }
  table.reflow tr td:first-child { border-left: 0; }
  table.reflow td::before { content: attr(data-label); font-weight: 600; color: #555;
    text-align: left; flex: none; }
}
"""
_CSS = (":root { color-scheme: light; "
        + " ".join(f"--{k}: {v};" for k, v in STATUS_COLORS.items()) + " }" + _CSS)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _status_class(status: str) -> str:
    return status if status in STATUS_COLORS else "info"


def _badge(status: str) -> str:
    return f'<span class="badge {_status_class(status)}">{_e(status.upper())}</span>'


def _img(plot: Plot) -> str:
    uri = f"data:{plot.mime};base64,{base64.b64encode(plot.data).decode('ascii')}"
    return (f'<figure><img src="{uri}" alt="{_e(plot.alt)}">'
            f"<figcaption>{_e(plot.alt)}</figcaption></figure>")


def _doc(f: Finding) -> str:
    return f' <span class="doc">(explained in <code>{_e(f.doc)}</code>)</span>' if f.doc else ""


def _finding_item(f: Finding) -> str:
    mask = f"<code>{_e(f.mask)}</code> " if f.mask else ""
    return (f"<li>{_badge(f.severity)} {mask}<code>[{_e(f.code)}]</code> {_e(f.message)}"
            f'<br><span class="remedy">remedy: {_e(f.remedy)}</span>{_doc(f)}</li>')


def _where(f: Finding, index_of: dict[str, int]) -> str:
    if f.block in index_of:
        block = (f'<a href="#{anchor(index_of[f.block])}"><code>'
                 f"{_e(display_name(f.block))}</code></a>")
    else:
        block = f"<code>{_e(f.block)}</code>" if f.block else "model"
    return block + (f" <code>{_e(f.mask)}</code>" if f.mask else "")


def _finding_groups(report: Report, index_of: dict[str, int]) -> list[str]:
    """The findings, one entry per code and remedy, listing where each was found."""
    out = ['<ul class="findings">']
    for group in grouped_findings(report):
        f = group[0]
        blocks = len({g.block for g in group})
        count = (f"{len(group)} findings in {blocks} blocks" if len(group) > 1
                 else "1 finding")
        out.append(f"<li>{_badge(f.severity)} <code>[{_e(f.code)}]</code> {count}"
                   f'<br><span class="remedy">remedy: {_e(f.remedy)}</span>{_doc(f)}<ul>')
        out += [f"<li>{_where(g, index_of)}: {_e(g.message)}</li>" for g in group]
        out.append("</ul></li>")
    out.append("</ul>")
    return out


def _header(report: Report) -> list[str]:
    ck, inp, tool = report.checkpoint, report.inputs, report.tool
    where = _e(ck.path) if ck.path else "in-memory model"
    ck_bits = [f"format {_e(ck.format)}"]
    if ck.epoch_label:
        ck_bits.append(_e(ck.epoch_label))
    if ck.sha256:
        ck_bits.append(f"sha256 <code>{_e(ck.sha256[:16])}</code>")
    src = _e(inp.source) + (f" <code>{_e(inp.path)}</code>" if inp.path else "")
    in_bits = [f"{_e(inp.samples)} samples in {_e(inp.batches)} batches from {src}",
               "shape " + _e("x".join(str(s) for s in inp.shape))]
    if inp.normalize:
        in_bits.append(f"normalize {_e(inp.normalize)}")
    if inp.skipped:
        in_bits.append(f"{_e(inp.skipped)} unreadable skipped")
    out = [
        "<header>",
        "<h1>coordatt-diag report</h1>",
        f'<p class="meta">checkpoint <code>{where}</code> ({", ".join(ck_bits)})</p>',
        f'<p class="meta">inputs: {", ".join(in_bits)}</p>',
        f'<p class="meta">{_e(tool.get("name", "coordatt-diag"))} {_e(tool.get("version", ""))}, '
        f'torch {_e(tool.get("torch", ""))}</p>',
    ]
    if inp.note:
        out.append(f'<p class="note">note: {_e(inp.note)}</p>')
    out.append("</header>")
    return out


def _cell(label: str, content: str, cls: str = "") -> str:
    """A table cell that carries its column name, shown beside it when the table reflows."""
    klass = f' class="{cls}"' if cls else ""
    return f'<td{klass} data-label="{_e(label)}">{content}</td>'


def _block_table(report: Report, order: list[tuple[int, BlockReport]]) -> list[str]:
    cols = ("#", "block", "type", "kind", "feature", "masks", "smallest std", "std ratio",
            "findings", "status")
    rows = ['<div class="scroll"><table class="blocks reflow"><thead><tr>'
            + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>"]
    for i, b in order:
        cells = [
            (str(i), "num"),
            (f'<a href="#{anchor(i)}"><code>{_e(display_name(b.name))}</code></a>', "name"),
            (_e(b.type), ""), (_e(b.kind), ""), (_e(feature(b)), ""),
            (_e(", ".join(b.masks) or "-"), ""),
            (_e(fmt(smallest_std(b), 4)), "num"), (_e(std_ratio(b)), "num"),
            (str(len(b.findings)), "num"), (_badge(b.status), ""),
        ]
        rows.append(f'<tr class="{_status_class(b.status)}">'
                    + "".join(_cell(c, v, k) for c, (v, k) in zip(cols, cells, strict=True))
                    + "</tr>")
    rows.append("</tbody></table></div>")
    return rows


def _effect_section(report: Report, order: list[tuple[int, BlockReport]]) -> list[str]:
    measured = [(i, b, effect_rows(b)) for i, b in order if b.effect is not None]
    if not measured:
        return []
    out = ['<section id="effect"><h2>Mask effect</h2>',
           f'<p class="note">{_e(effect_note(report))}</p>',
           '<div class="scroll"><table class="effect"><thead><tr><th>block</th>'
           + "".join(f"<th>{_e(c)}</th>" for c in EFFECT_COLUMNS) + "</tr></thead><tbody>"]
    for i, b, rows in measured:
        for k, cells in enumerate(rows):
            name = (f'<a href="#{anchor(i)}"><code>{_e(display_name(b.name))}</code></a>'
                    if k == 0 else "")
            out.append(f'<tr><td class="name">{name}</td><td>{_e(cells[0])}</td>'
                       + "".join(f'<td class="num">{_e(c)}</td>' for c in cells[1:]) + "</tr>")
    out.append("</tbody></table></div></section>")
    return out


def _block_section(i: int, b: BlockReport, plots: list[Plot]) -> list[str]:
    facts = [f"type <code>{_e(b.type)}</code>", f"kind {_e(b.kind)}",
             f"feature {_e(feature(b))}", f"{b.params:,} parameters",
             f"std ratio {_e(std_ratio(b))}",
             "identity path" if b.identity_path else "multiplicative"]
    if b.weight_rms is not None:
        facts.append(f"weight RMS {b.weight_rms:.4g}")
    out = [
        f'<section class="block {_status_class(b.status)}" id="{anchor(i)}">',
        '<a class="top" href="#blocks">back to the table</a>',
        f"<h3>{i}. <code>{_e(display_name(b.name))}</code> {_badge(b.status)}</h3>",
        f'<p class="meta">{", ".join(facts)}</p>',
    ]
    if b.masks:
        out.append('<div class="scroll"><table class="masks reflow"><thead><tr>'
                   + "".join(f"<th>{_e(c)}</th>" for c in MASK_COLUMNS) + "</tr></thead><tbody>")
        for name in b.masks:
            cells = mask_row(b, name)
            out.append("<tr>" + _cell(MASK_COLUMNS[0], f"<code>{_e(cells[0])}</code>")
                       + "".join(_cell(c, _e(v), "num")
                                 for c, v in zip(MASK_COLUMNS[1:], cells[1:], strict=True))
                       + "</tr>")
        out.append("</tbody></table></div>")
    else:
        out.append('<p class="note">no mask values were captured for this block</p>')
    monitor = monitor_lines(b)
    if monitor:
        out.append('<ul class="monitor">' + "".join(
            f"<li>monitor <code>{_e(part or '(block)')}</code>: {_e(line)}</li>"
            for part, line in monitor) + "</ul>")
    if b.findings:
        out.append('<ul class="findings">')
        out += [_finding_item(f) for f in b.findings]
        out.append("</ul>")
    else:
        out.append("<p>No findings: the masks look alive.</p>")
    if plots:
        out += ['<div class="plots">'] + [_img(p) for p in plots] + ["</div>"]
    out.append("</section>")
    return out


def _thresholds(report: Report) -> list[str]:
    if not report.thresholds:
        return []
    out = ["<details><summary>Thresholds used</summary>", "<table><tbody>"]
    for key, value in report.thresholds.items():
        out.append(f"<tr><td><code>{_e(key)}</code></td><td>{_e(value)}</td></tr>")
    out.append("</tbody></table></details>")
    return out


def render_html(report: Report, plots: PlotSet, overlay_note: str) -> str:
    """The whole page.

    Args:
        report: the frozen report.
        plots: its figures (`plots.render_plots`).
        overlay_note: the line shown in the overlays section (what the overlays show, or why
            there are none).

    Returns:
        The HTML text.
    """
    order = blocks_by_health(report)
    index_of = {b.name: i for i, b in enumerate(report.blocks, start=1)}
    s = report.summary
    title = f"coordatt-diag: {report.checkpoint.path or 'model'}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body><main>",
    ]
    out += _header(report)
    out.append('<nav class="meta"><a href="#summary">summary</a> · <a href="#findings">'
               'findings</a> · <a href="#blocks">blocks</a> · '
               + ('<a href="#effect">mask effect</a> · '
                  if any(b.effect is not None for b in report.blocks) else "")
               + '<a href="#overlays">overlays</a> · <a href="#details">blocks in detail</a></nav>')
    out += [
        '<section id="summary"><h2>Summary</h2>',
        f"<p>{_badge(s.status)} {s.blocks} attention blocks: {s.ok} ok, {s.warn} warn, "
        f"{s.fail} fail.</p>",
    ]
    out.append('<h2 id="findings">Findings</h2>')
    if any(b.findings for b in report.blocks) or report.findings:
        out += _finding_groups(report, index_of)
    else:
        out.append("<p>No findings: every mask looks alive.</p>")
    if plots.summary is not None:
        out.append(_img(plots.summary))
    out.append("</section>")
    out.append('<section id="blocks"><h2>Blocks</h2>')
    out.append('<p class="note">Failing blocks first, then warnings, then healthy blocks; '
               "# is the position in the model.</p>")
    out += _block_table(report, order)
    out.append("</section>")
    out += _effect_section(report, order)
    out.append('<section id="overlays"><h2>Overlays</h2>')
    out.append(f'<p class="note" id="overlay-note">{_e(overlay_note)}</p>')
    out += [_img(p) for p in plots.grid]
    out.append("</section>")
    out.append('<section id="details"><h2>Blocks in detail</h2>')
    for i, b in order:
        out += _block_section(i, b, plots.blocks.get(b.name, []))
    out.append("</section>")
    out += _thresholds(report)
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
