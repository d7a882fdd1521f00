"""GitHub Actions output of a `check` result: workflow-command annotations and the Markdown job
summary.

* Annotations (written when `GITHUB_ACTIONS=true`): one line per finding, `::error` for the
  findings that fail the gate, `::warning` / `::notice` for the warn / info findings below it, in
  the format of GitHub's workflow commands (`::error title=T::MESSAGE`, with `%`, CR and LF escaped
  in the message, and also `:` and `,` in the title).
* The job summary (appended to the file `$GITHUB_STEP_SUMMARY` names): a Markdown section per
  checkpoint with its blocks and failing findings.
"""

from __future__ import annotations

from pathlib import Path

from coordatt_diag.results import Finding, MaskStats, display_name
from coordatt_diag.runs.check import CheckResult, Verdict, gate_severity

_COMMAND = {"fail": "error", "warn": "warning", "info": "notice"}


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(f: Finding, verdict: Verdict) -> str:
    """The workflow command for one finding of one checkpoint."""
    failing = f in verdict.failing
    # "error" marks exactly what failed the gate ("fail" findings always do)
    command = "error" if failing else _COMMAND[f.severity]
    ck = Path(verdict.report.checkpoint.path or "model").name
    where = display_name(f.block) + (f" {f.mask}" if f.mask else "")
    title = f"coordatt-diag {ck} {where}: {f.code}"
    message = f"{f.message}. Remedy: {f.remedy}"
    return f"::{command} title={_escape_property(title)}::{_escape_data(message)}"


def annotation_lines(result: CheckResult) -> list[str]:
    """One workflow command per finding of every checkpoint, failing ones first."""
    lines: list[str] = []
    for v in result.verdicts:
        lines.extend(annotation(f, v) for f in v.failing)
        lines.extend(annotation(f, v) for f in v.findings() if f not in v.failing)
    return lines


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def step_summary(result: CheckResult) -> str:
    """The Markdown job summary of a check result."""
    from coordatt_diag.reports.wording import verdict_line

    lines = [f"## coordatt-diag {verdict_line(result)}", ""]
    if result.baseline:
        lines += [f"Baseline: `{result.baseline}` (max drop {result.options.max_drop:.0%}, "
                  f"max std-ratio drop {result.options.max_ratio_drop:.0%})", ""]
    for v in result.verdicts:
        r = v.report
        s = r.summary
        label = r.checkpoint.epoch_label
        epoch = f", {label}" if label else ""
        lines += [
            f"### `{r.checkpoint.path or 'model'}`{epoch}: {'PASS' if v.healthy else 'FAIL'}",
            "",
            f"{s.blocks} blocks: {s.ok} ok, {s.warn} warn, {s.fail} fail; "
            f"{r.inputs.samples} samples from {r.inputs.source}.",
            "",
            "| block | type | mask | std | pos std | std ratio | status |",
            "|---|---|---|---:|---:|---:|---|",
        ]
        for b in r.blocks:
            ratio = _num(b.std_ratio.mean if b.std_ratio else None, 3)
            masks: list[tuple[str, MaskStats | None]] = list(b.masks.items()) or [("-", None)]
            for i, (name, m) in enumerate(masks):
                lines.append(
                    f"| {_cell(display_name(b.name)) if i == 0 else ''} "
                    f"| {_cell(b.type) if i == 0 else ''} | {name} "
                    f"| {_num(m.std if m else None)} | {_num(m.pos_std if m else None)} "
                    f"| {ratio if i == 0 else ''} | {b.status.upper() if i == 0 else ''} |")
        if v.failing:
            lines += ["", f"Findings at or above `{v.fail_on}`:", ""]
            for f in v.failing:
                where = display_name(f.block) + (f" {f.mask}" if f.mask else "")
                level = gate_severity(f, v.levels)
                raised = f" (a {f.severity} the gate counts as {level})" if level != f.severity \
                    else ""
                lines.append(f"- **{level.upper()}**{raised} `{where}` `{f.code}`: "
                             f"{_cell(f.message)}; remedy: {_cell(f.remedy)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def append_step_summary(result: CheckResult, path: Path) -> None:
    """Append the job summary to `path` (the file `$GITHUB_STEP_SUMMARY` names)."""
    from coordatt_diag.reports.atomic import append_text

    append_text(path, step_summary(result))
