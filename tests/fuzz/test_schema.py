"""The small report validator (`coordatt_diag.load.report_file`) agrees with `jsonschema` on the
shipped schema: it accepts a real report and rejects every bad one of the corpus that jsonschema
rejects."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from coordatt_diag.load.report_file import SchemaError, report_schema, validate
from tests.fuzz.corpus import bad_reports, good_report


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from tests.fuzz import models

    w = tmp_path_factory.mktemp("schema")
    torch.save(models.tiny().state_dict(), w / "sd.pt")
    return good_report(w)


def test_good_report_passes_both(good: dict[str, Any]) -> None:
    validate(good, report_schema())
    jsonschema.validate(good, report_schema())


def test_bad_reports_fail_both(good: dict[str, Any]) -> None:
    checked = 0
    for name, doc in bad_reports(good).items():
        if isinstance(doc, str) or name.startswith("check_") or name == "zero_blocks":
            continue  # not JSON, a check result (unwrapped first), or valid (refused by check)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, report_schema())
        with pytest.raises(SchemaError):
            validate(doc, report_schema())
        checked += 1
    assert checked >= 18


def test_zero_block_report_is_valid(good: dict[str, Any]) -> None:
    doc = bad_reports(good)["zero_blocks"]
    validate(doc, report_schema())
    jsonschema.validate(doc, report_schema())


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(SchemaError, match="does not know"):
        validate(1, {"multipleOf": 2})
