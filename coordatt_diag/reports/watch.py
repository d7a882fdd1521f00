"""Outputs of a mask watch during training (`coordatt_diag.runs.watch`): the log lines and the
JSON-lines history.

The log says something only when something changed: at the first probe which blocks are
watched, then a line per finding first seen, worse, better or resolved (with its value, threshold
and remedy), and a line when the watch asks the training to stop. The history holds one report
per probe, one JSON object per line, in the report schema
(`coordatt_diag/schema/report.schema.json`): `coordatt-diag trend history.jsonl` and
`coordatt-diag report --from-json history.jsonl` read it as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from coordatt_diag.reports.json_report import _clean
from coordatt_diag.results import Finding, Report, display_name
from coordatt_diag.runs.watch import FindingChange, ProbeResult

HISTORY_NAME = "history.jsonl"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _what(f: Finding) -> str:
    mask = f" {f.mask}" if f.mask else ""
    return f"{display_name(f.block)}{mask} {f.code}"


def change_line(label: str, change: FindingChange) -> str:
    """One change as a log line, e.g. `epoch 7: stage1.att a_h near_constant (fail, value 0.018,
    threshold 0.01), first seen; remedy: ...`."""
    f = change.finding
    values = f"value {_num(f.value)}, threshold {_num(f.threshold)}"
    if change.change == "resolved":
        return (f"{label}: {_what(f)} resolved (first seen {change.first_seen.label}; last "
                f"{f.severity}, {values})")
    if change.change == "new":
        first = change.first_seen.label
        again = "" if first == label else f" again (first seen {first})"
        return (f"{label}: {_what(f)} ({f.severity}, {values}), first seen{again}: {f.message}; "
                f"remedy: {f.remedy}")
    return (f"{label}: {_what(f)} {change.change}: {change.previous} -> {f.severity} ({values}, "
            f"first seen {change.first_seen.label}); remedy: {f.remedy}")


def probe_lines(result: ProbeResult, stop_on: str | None = None) -> list[str]:
    """The log lines of one probe: none when nothing changed."""
    label = result.time.label
    lines: list[str] = []
    r = result.report
    if result.first_probe:
        names = ", ".join(display_name(b.name) for b in r.blocks)
        lines.append(f"mask watch, {label}: {len(r.blocks)} attention blocks ({names}) on "
                     f"{r.inputs.samples} probe samples; status {r.summary.status.upper()} "
                     f"({result.seconds:.2f} s)")
    lines += [change_line(label, c) for c in result.changes]
    if result.stop:
        at = f", at or above stop_on={stop_on!r}" if stop_on else ""
        lines.append(f"{label}: mask health is {r.summary.status.upper()}{at}: asking the "
                     "training to stop")
    return lines


class LogLines:
    """A watch sink that hands each probe's lines to `log` (e.g. `print`, a logger's `info`)."""

    def __init__(self, log: Callable[[str], object], stop_on: str | None = None) -> None:
        self.log = log
        self.stop_on = stop_on

    def write(self, result: ProbeResult) -> None:
        for line in probe_lines(result, self.stop_on):
            self.log(line)

    def close(self) -> None:
        pass


def history_line(report: Report) -> str:
    """One report as one line of JSON (NaN and infinity become null), newline included."""
    return json.dumps(_clean(report.to_dict()), allow_nan=False, separators=(",", ":")) + "\n"


class HistoryWriter:
    """A watch sink appending each probe's report to `log_dir/history.jsonl`.

    Each line is written whole and flushed, so a reader (or a crash) sees complete lines only,
    except possibly a last partial one, which `coordatt_diag.runs.trend.read_history` skips.
    """

    def __init__(self, log_dir: Path) -> None:
        self.path = Path(log_dir) / HISTORY_NAME
        self._fh: IO[str] | None = None

    def write(self, result: ProbeResult) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open across probes
        self._fh.write(history_line(result.report))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
