"""The report page's layout in headless Chromium: at 1400 and at 700 px no table runs past the
window (the block and mask tables reflow into cards at narrow widths, the others scroll inside
their box) and the page itself never scrolls sideways. Skipped where Chromium is not installed
(Debian: `apt-get install -y chromium`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from coordatt_diag.reports.html_report import render_html
from coordatt_diag.reports.plots import PlotSet
from coordatt_diag.results import (
    BlockReport,
    CheckpointInfo,
    InputsInfo,
    MaskStats,
    Report,
    StdRatio,
    Summary,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import screenshots  # noqa: E402


@pytest.fixture(scope="module")
def chromium() -> str:
    found = screenshots.find_chromium()
    if found is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return found


def _mask(**kw: Any) -> MaskStats:
    base = dict(count=1000, min=0.1, max=0.9, mean=0.5, std=0.1, sat_low=0.0, sat_high=0.0,
                exact01=0.0, nonfinite=0, pos_std=0.05, chan_std=0.04, hist=[1] * 64,
                shape=[256, 80, 1])
    base.update(kw)
    return MaskStats(**base)  # type: ignore[arg-type]


def _report(blocks: int) -> Report:
    """A report with long block names and every table column filled."""
    out = []
    for i in range(blocks):
        out.append(BlockReport(
            name=f"model.backbone.stage{i}.residual_branch.coordinate_attention_{i}",
            type="CoordinateAttentionWithALongClassName", kind="coordinate",
            feature=[256, 80, 80], masks={"a_h": _mask(), "a_w": _mask()},
            std_ratio=StdRatio(mean=0.25, min=0.2, batches=1), params=12345, identity_path=False,
            weight_rms=0.05, status="ok"))
    return Report(schema="coordatt-diag/report@1", tool={"name": "coordatt-diag"},
                  checkpoint=CheckpointInfo(path="runs/exp/weights/a-rather-long-name-best.pt",
                                            sha256="ab" * 32, format="state_dict"),
                  inputs=InputsInfo(source="synthetic", path=None, samples=8, batches=1,
                                    batch_size=8, shape=[3, 64, 64]),
                  blocks=out, summary=Summary(blocks=blocks, ok=blocks, warn=0, fail=0,
                                              status="ok"),
                  thresholds={"near_constant_warn": 0.03})


@pytest.mark.parametrize("width", [1400, 700])
def test_no_table_is_cut_off(chromium: str, tmp_path: Path, width: int) -> None:
    page = tmp_path / "index.html"
    page.write_text(render_html(_report(4), PlotSet(summary=None), "no overlays"), encoding="utf-8")
    layout = screenshots.layout_check(page, width, chromium)
    assert layout["viewport"] <= width
    assert layout["pageWidth"] <= layout["viewport"], "the page scrolls sideways"
    tables = layout["tables"]
    assert any("blocks" in t["cls"] for t in tables)
    for t in tables:
        assert t["visible"]
        assert t["boxRight"] <= layout["viewport"] + 0.5, t
        if {"blocks", "masks"} & set(t["cls"].split()):
            # the block and mask tables fit the window whole: nothing hidden to the right
            assert t["right"] <= layout["viewport"] + 0.5 and not t["cut"], t
