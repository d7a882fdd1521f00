"""The outputs of `check`: the lines on stderr (one per failing block, then the verdict), the
check JSON, and `emit_check`, which writes every output the options ask for."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from coordatt_diag.errors import UsageError, opt
from coordatt_diag.reports.atomic import write_text
from coordatt_diag.reports.json_report import _clean, write_report
from coordatt_diag.reports.wording import verdict_line
from coordatt_diag.results import Finding, display_name
from coordatt_diag.runs.check import CheckResult, baseline_report, gate_severity

_RANK = {"info": 0, "warn": 1, "fail": 2}


def _short(f: Finding) -> str:
    text = f.code + (f" {f.mask}" if f.mask else "")
    if f.value is not None and f.threshold is not None:
        text += f" ({f.value:.4g} vs {f.threshold:.4g})"
    return text


def failing_lines(result: CheckResult) -> list[str]:
    """One line per block (or the model) with findings at or above the gate, per checkpoint,
    tagged with the level the gate counted them at."""
    lines = []
    for v in result.verdicts:
        ck = v.report.checkpoint.path or "model"
        for block, findings in v.failing_blocks().items():
            level = max((gate_severity(f, v.levels) for f in findings), key=_RANK.__getitem__)
            parts = ", ".join(_short(f) for f in findings)
            lines.append(f"{level.upper()} {ck} {display_name(block) or 'model'}: {parts}")
    return lines


def check_json(result: CheckResult) -> str:
    """The check result as indented JSON text (schema `coordatt-diag/check@1`)."""
    return json.dumps(_clean(result.to_dict()), indent=2, allow_nan=False) + "\n"


def emit_check(
    result: CheckResult,
    *,
    json_out: str | None = None,
    junit: Path | None = None,
    write_baseline: Path | None = None,
    environ: Mapping[str, str] | None = None,
    wide: bool | None = None,
) -> None:
    """Write every output of `check`.

    * stdout: each checkpoint's report (as `inspect` prints it), or only the JSON with
      `json_out="-"`;
    * files: the check JSON (`json_out`), the JUnit XML (`junit`), the baseline (`write_baseline`,
      one checkpoint only), all written atomically;
    * GitHub Actions: annotations when `GITHUB_ACTIONS=true` (on stdout, or on stderr when stdout
      carries the JSON; the runner reads both), the job summary appended to
      `$GITHUB_STEP_SUMMARY` when it is set;
    * stderr: one line per failing block, then the verdict.

    `wide` is the terminal table's layout (`terminal.render`).

    Raises:
        UsageError: `write_baseline` with several checkpoints.
    """
    from coordatt_diag.reports.github import annotation_lines, append_step_summary
    from coordatt_diag.reports.junit import write_junit
    from coordatt_diag.reports.terminal import make_console, render

    env = os.environ if environ is None else environ
    if write_baseline is not None and len(result.verdicts) != 1:
        raise UsageError(
            f"{opt('write_baseline')} needs exactly one checkpoint, got {len(result.verdicts)}")
    if json_out == "-":
        sys.stdout.write(check_json(result))
    else:
        console = make_console()
        for v in result.verdicts:
            render(v.report, console, wide=wide)
        if json_out:
            write_text(Path(json_out), check_json(result))
    if junit is not None:
        write_junit(result, junit)
    if write_baseline is not None:
        write_report(baseline_report(result.verdicts[0].report), write_baseline)
    if env.get("GITHUB_ACTIONS") == "true":
        stream = sys.stderr if json_out == "-" else sys.stdout
        for line in annotation_lines(result):
            stream.write(line + "\n")
        stream.flush()
    summary_file = env.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        append_step_summary(result, Path(summary_file))
    width = _terminal_width(sys.stderr)
    for line in [*failing_lines(result), verdict_line(result)]:
        sys.stderr.write(fold_line(line, width) + "\n")


def _terminal_width(stream: object) -> int | None:
    """The width of the terminal `stream` writes to; None when it is not a terminal (a CI log,
    a pipe), where each line stays whole for grep and log annotations."""
    try:
        if stream.isatty():  # type: ignore[attr-defined]
            return os.get_terminal_size(stream.fileno()).columns  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        pass
    return None


def fold_line(line: str, width: int | None) -> str:
    """`line` folded at word boundaries to `width` columns with a hanging indent of four
    spaces (a terminal would otherwise break it mid-number); unchanged when `width` is None."""
    if width is None or len(line) <= width:
        return line
    import textwrap

    return "\n".join(textwrap.wrap(line, width=max(width, 20), subsequent_indent="    ",
                                    break_long_words=False, break_on_hyphens=False))
