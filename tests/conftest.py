"""Shared test fixtures: a CLI runner, JSON-schema validation of reports."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from typer.testing import CliRunner


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})


@pytest.fixture(scope="session")
def report_schema() -> dict[str, Any]:
    text = resources.files("coordatt_diag").joinpath("schema/report.schema.json").read_text()
    return json.loads(text)


@pytest.fixture
def validate_report(report_schema: dict[str, Any]):  # type: ignore[no-untyped-def]
    import jsonschema

    def check(data: dict[str, Any]) -> None:
        jsonschema.validate(data, report_schema)

    return check
