"""The JSON report (`--json`): the plain serialisation of `Report`, schema
`coordatt_diag/schema/report.schema.json`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from coordatt_diag.reports.atomic import write_text
from coordatt_diag.results import Report


def _clean(value: Any) -> Any:
    # JSON has no NaN or infinity: they become null
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def report_json(report: Report) -> str:
    """The report as indented JSON text."""
    return json.dumps(_clean(report.to_dict()), indent=2, allow_nan=False) + "\n"


def write_report(report: Report, path: Path) -> None:
    """Write the report to `path` atomically."""
    write_text(path, report_json(report))


def read_report(path: Path) -> Report:
    """Read a report written by `write_report` (raises ValueError for other JSON)."""
    with open(path, encoding="utf-8") as fh:
        return Report.from_dict(json.load(fh))
