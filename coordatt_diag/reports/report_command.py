"""The library behind `coordatt-diag report`: analyse a checkpoint (or read a saved report), then
write the report folder (`coordatt_diag.reports.folder`).

Example:
    >>> from coordatt_diag.runs.inspect import InspectOptions
    >>> from coordatt_diag.reports.report_command import make_report
    >>> folder = make_report(Path("diag"), Path("best.pt"), InspectOptions(trust=True))
    >>> folder.index  # diag/index.html
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

from coordatt_diag.errors import InputError, UsageError, opt
from coordatt_diag.runs.trend import HISTORY_SUFFIX, read_history

if TYPE_CHECKING:
    from coordatt_diag.reports.folder import ReportFolder
    from coordatt_diag.results import PathArg, Report
    from coordatt_diag.runs.inspect import InspectOptions, Progress

FROM_JSON_NOTE = ("Overlays are not available with --from-json: a report JSON holds statistics, "
                  "not masks or images. Run `coordatt-diag report` on the checkpoint for them.")


def read_saved_report(path: PathArg) -> Report:
    """The report in a JSON file written by `inspect --json` (or a report folder's report.json),
    validated against the report schema, or the latest probe of a watch's JSON-lines history
    (`.jsonl`).

    Raises:
        InputError: the file is missing, not JSON, or not a coordatt-diag report.
    """
    from coordatt_diag.runs.check import read_report_file

    path = Path(path)
    if path.suffix == HISTORY_SUFFIX:
        if not path.is_file():
            raise InputError(f"{opt('from_json', path)} does not exist")
        return read_history(path)[-1]  # a watch's history: its latest probe
    return read_report_file(path, opt("from_json"))


def select_blocks(report: Report, pattern: str) -> Report:
    """The report restricted to the blocks whose name matches `pattern` (`re.search`).

    Raises:
        UsageError: the pattern is invalid or matches no block.
    """
    from coordatt_diag.health.rules import summarize

    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{opt('blocks', pattern)} is not a valid regular expression: {exc}") from exc
    blocks = [b for b in report.blocks if regex.search(b.name)]
    if not blocks:
        raise UsageError(f"{opt('blocks', pattern)} matches none of the {len(report.blocks)} blocks "
                         "in the report")
    return dataclasses.replace(report, blocks=blocks,
                               summary=summarize(blocks, list(report.findings)))


def make_report(
    out: PathArg,
    checkpoint: PathArg | None = None,
    options: InspectOptions | None = None,
    *,
    from_json: PathArg | None = None,
    overlays: int = 4,
    fmt: str = "png",
    force: bool = False,
    overlay_scale: str = "absolute",
    progress: Progress | None = None,
    effect_progress: Progress | None = None,
) -> ReportFolder | None:
    """Analyse `checkpoint` as `inspect` does (or read `from_json`) and write the report folder.

    Args:
        out: the folder to write (index.html, report.md, report.json, plots/).
        checkpoint: the checkpoint to analyse (exactly one of `checkpoint` and `from_json`).
        options: the `inspect` options (`effect` and `labels` add the mask effect to the pages);
            with `from_json` only `blocks` is used (a saved effect is shown as it is).
        from_json: a report JSON written by `inspect --json`, rendered as it is.
        overlays: number of sample images with mask overlays (0: none; none with `from_json`).
        fmt: figure format, "png" or "svg".
        force: replace `out` even if it holds something other than a previous report.
        progress: called with the number of batches done.
        effect_progress: called with the number of batches the mask effect has done.

    Returns:
        The written folder; None on ranks > 0 of a torchrun run, where rank 0 writes.

    Raises:
        UsageError: bad options or `out` (checked before the model runs).
        DiagError: the errors of `inspect` (checkpoint, inputs, no blocks).
    """
    from coordatt_diag.reports.folder import check_out_dir, check_overlay_scale, write_report_folder
    from coordatt_diag.reports.plots import FORMATS
    from coordatt_diag.runs.distributed import is_writer
    from coordatt_diag.runs.inspect import InspectOptions
    from coordatt_diag.runs.overlays import inspect_with_overlays

    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    from_json = Path(from_json) if from_json is not None else None
    if (checkpoint is None) == (from_json is None):
        raise UsageError(f"name a checkpoint or {opt('from_json', 'FILE')} (one of them)")
    if overlays < 0:
        raise UsageError(f"{opt('overlays')} must be 0 or more")
    if fmt not in FORMATS:
        raise UsageError(f"{opt('fmt')} must be one of {', '.join(FORMATS)}, not {fmt!r}")
    opts = options or InspectOptions()
    check_overlay_scale(overlay_scale)
    check_out_dir(out, force)  # before a long run, not after it
    if from_json is not None:
        if dataclasses.replace(opts, blocks=None) != InspectOptions():
            raise UsageError(f"{opt('from_json')} renders a saved report: the model and input "
                             f"options ({opt('trust')}, {opt('model')}, {opt('images')}, ...) do "
                             f"not apply; {opt('blocks')} does")
        report = read_saved_report(from_json)
        if opts.blocks is not None:
            report = select_blocks(report, opts.blocks)
        return write_report_folder(report, out, None, fmt=fmt, force=force,
                                   overlay_scale=overlay_scale,
                                   no_overlays_reason=FROM_JSON_NOTE)
    assert checkpoint is not None
    report, shown = inspect_with_overlays(checkpoint, opts, overlays, progress, effect_progress)
    if not is_writer():
        return None
    return write_report_folder(report, out, shown, fmt=fmt, force=force,
                               overlay_scale=overlay_scale)
