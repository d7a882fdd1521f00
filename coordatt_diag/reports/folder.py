"""The report folder (`coordatt-diag report --out DIR`), written all at once or not at all.

    DIR/index.html    one self-contained page (figures embedded)
    DIR/report.md     the same as GitHub-flavoured Markdown, figures linked from plots/
    DIR/report.json   the inspect report (`coordatt_diag/schema/report.schema.json`)
    DIR/plots/        the figures (PNG or SVG)

Everything is rendered into a temporary folder beside DIR and renamed to DIR when the command
succeeds (`coordatt_diag.reports.atomic.staged_folder`), so a failed or interrupted run leaves no
partial folder and a reader never sees half a report. An existing DIR is
replaced only when it holds a previous report (nothing but the files above) or when `force` is
set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordatt_diag.errors import UsageError, opt, show_path
from coordatt_diag.reports.atomic import staged_folder
from coordatt_diag.results import PathArg, Report
from coordatt_diag.runs.overlays import Overlays

#: What a report folder holds; a folder with nothing else is a previous report.
REPORT_ENTRIES = frozenset({"index.html", "report.md", "report.json", "plots"})


@dataclass(frozen=True)
class ReportFolder:
    """A written report folder.

    Attributes:
        path: the folder.
        files: the files written, relative to `path`, sorted.
        report: the report it shows.
    """

    path: Path
    files: list[str]
    report: Report

    @property
    def index(self) -> Path:
        """The HTML page."""
        return self.path / "index.html"


def is_previous_report(path: Path) -> bool:
    """Whether `path` is a folder holding only what a report folder holds."""
    entries = {p.name for p in path.iterdir()}
    return "index.html" in entries and entries <= REPORT_ENTRIES


def check_out_dir(out: PathArg, force: bool = False) -> None:
    """Refuse an `--out` folder that cannot be written or would destroy something.

    Raises:
        UsageError: `out` is a file, the current folder or one of its parents, or a non-empty
            folder that is not a previous report (unless `force`).
    """
    from coordatt_diag.reports.atomic import check_output_folder

    check_output_folder(out, opt("out"))
    out = Path(out)
    name = show_path(out)
    try:
        resolved = out.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UsageError(f"{opt('out')} {name} cannot be resolved ({exc}); name another folder") from exc
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise UsageError(f"{opt('out')} {name} is the current folder, one of its parents or your "
                         "home folder; name a new folder such as diag/")
    try:
        occupied = out.is_dir() and any(out.iterdir()) and not is_previous_report(out)
    except OSError as exc:
        raise UsageError(f"{opt('out')} {name} cannot be read: {exc.strerror}") from exc
    if occupied and not force:
        raise UsageError(f"{opt('out')} {name} is not empty and does not hold a previous report; "
                         f"name another folder or pass {opt('force', True)} to replace it")


def check_overlay_scale(scale: str) -> None:
    """Refuse an overlay scale other than "absolute" or "block"."""
    from coordatt_diag.reports.plots import OVERLAY_SCALES

    if scale not in OVERLAY_SCALES:
        raise UsageError(f"{opt('overlay_scale')} must be one of {', '.join(OVERLAY_SCALES)}, "
                         f"not {scale!r}")


def overlay_note(overlays: Overlays | None, reason: str | None = None,
                 scale: str = "absolute") -> str:
    """The line under the overlays heading: what they show, or why there are none."""
    if overlays is not None and overlays.blocks:
        colours = ("The colours of a block span its own range (dark: low, yellow: high; at "
                   "least 0.06 wide, so that a flat map stays flat): compare blocks by the "
                   "range under each name, not by colour." if scale == "block" else
                   "The colours are on the absolute scale, mask value 0 (dark) to 1 (yellow), "
                   "the same for every block: a collapsed mask is one flat colour "
                   "(--overlay-scale block stretches each block over its own range).")
        return (f"{len(overlays.images)} samples ({overlays.display}) with each block's map laid "
                "over them: a_h ⊗ a_w averaged over channels for coordinate attention, the "
                f"channel mean of a_hw, the spatial map for CBAM. {colours} Channel-only blocks "
                "(SE) have no map.")
    if overlays is not None:
        return "No overlays: no block has a positional mask (channel attention only)."
    return reason or "Overlays are off (--overlays 0)."


def write_report_folder(
    report: Report,
    out: PathArg,
    overlays: Overlays | None = None,
    *,
    fmt: str = "png",
    force: bool = False,
    no_overlays_reason: str | None = None,
    overlay_scale: str = "absolute",
) -> ReportFolder:
    """Render the report into `out` (index.html, report.md, report.json, plots/).

    Args:
        report: the frozen report.
        out: the folder to write.
        overlays: the overlay data of the run (None: no overlays).
        fmt: figure format, "png" or "svg".
        force: replace `out` even when it holds something other than a previous report.
        no_overlays_reason: the line the pages show when `overlays` is None.
        overlay_scale: overlay colours over mask values 0..1 ("absolute") or over each
            block's own range ("block").

    Returns:
        The written folder.

    Raises:
        UsageError: a bad format or `out` (see `check_out_dir`).
    """
    from coordatt_diag.reports.html_report import render_html
    from coordatt_diag.reports.json_report import report_json
    from coordatt_diag.reports.markdown_report import render_markdown
    from coordatt_diag.reports.plots import FORMATS, render_plots

    if fmt not in FORMATS:
        raise UsageError(f"{opt('fmt')} must be one of {', '.join(FORMATS)}, not {fmt!r}")
    check_overlay_scale(overlay_scale)
    out = Path(out)
    check_out_dir(out, force)
    plots = render_plots(report, overlays, fmt, overlay_scale)
    note = overlay_note(overlays, no_overlays_reason, overlay_scale)
    files = ["index.html", "report.md", "report.json"]
    with staged_folder(out) as tmp:
        (tmp / "plots").mkdir()
        for plot in plots.all():
            (tmp / "plots" / plot.file).write_bytes(plot.data)
            files.append(f"plots/{plot.file}")
        (tmp / "report.json").write_text(report_json(report), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(report, plots, note), encoding="utf-8")
        (tmp / "index.html").write_text(render_html(report, plots, note), encoding="utf-8")
    return ReportFolder(path=out, files=sorted(files), report=report)

