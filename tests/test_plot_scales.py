"""What the figures claim: the std-ratio floor only over the blocks it judges, the axis-profile
band in view, overlays on the absolute 0-1 colour scale unless a per-block stretch is asked for."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from coordatt_diag.reports import plots
from coordatt_diag.results import (
    AxisProfile,
    BlockReport,
    CheckpointInfo,
    InputsInfo,
    MaskStats,
    Report,
    StdRatio,
    Summary,
)


def _mask(profile: AxisProfile | None = None) -> MaskStats:
    return MaskStats(count=100, min=0.1, max=0.9, mean=0.5, std=0.1, sat_low=0.0, sat_high=0.0,
                     exact01=0.0, nonfinite=0, pos_std=0.05, chan_std=0.04, hist=[1] * 64,
                     shape=[8, 4, 1], profile_h=profile)


def _block(name: str, identity: bool, ratio: float, profile: AxisProfile | None = None) -> BlockReport:
    return BlockReport(name=name, type="CoordAtt", kind="coordinate", feature=[8, 4, 4],
                       masks={"a_h": _mask(profile)}, std_ratio=StdRatio(ratio, ratio, 1),
                       params=10, identity_path=identity, weight_rms=0.1, status="ok")


def _report(blocks: list[BlockReport], **thresholds: Any) -> Report:
    return Report(schema="coordatt-diag/report@1", tool={},
                  checkpoint=CheckpointInfo(path=None, sha256=None, format="in-memory"),
                  inputs=InputsInfo(source="synthetic", path=None, samples=2, batches=1,
                                    batch_size=2, shape=[3, 8, 8]),
                  blocks=blocks, summary=Summary(blocks=len(blocks), ok=len(blocks), warn=0,
                                                 fail=0, status="ok"),
                  thresholds={"std_ratio_floor": 0.45, "std_ratio_floor_multiplicative": 0.0,
                              "near_constant_warn": 0.03, "near_constant_fail": 0.01,
                              **thresholds})


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matplotlib figures the renderers encode, kept for inspection."""
    kept: list[Any] = []
    real = plots._encode

    def keep(fig: Any, fmt: str, palette: bool = True) -> bytes:
        kept.append(fig)
        return real(fig, fmt, palette)

    monkeypatch.setattr(plots, "_encode", keep)
    return kept


def _floor_segments(fig: Any) -> list[tuple[float, float, float]]:
    """(x start, x end, y) of every floor segment in the std-ratio panel."""
    ax = fig.axes[1]
    out = []
    for coll in ax.collections:
        if str(coll.get_label()).startswith("floor"):
            for seg in coll.get_segments():
                (x0, y0), (x1, _) = seg
                out.append((float(x0), float(x1), float(y0)))
    return out


def test_floor_only_over_blocks_it_applies_to(figures: list[Any]) -> None:
    report = _report([_block("mult", False, 0.25), _block("resid", True, 0.6),
                      _block("mult2", False, 0.26)])
    plots.summary_figure(report)
    segs = _floor_segments(figures[-1])
    # the identity-path block (x = 1) has the 0.45 floor; the multiplicative ones none (0 = off)
    assert segs == [(0.55, 1.45, 0.45)]


def test_multiplicative_floor_drawn_over_multiplicative_blocks(figures: list[Any]) -> None:
    report = _report([_block("mult", False, 0.25), _block("resid", True, 0.6)],
                     std_ratio_floor_multiplicative=0.2)
    plots.summary_figure(report)
    assert sorted(_floor_segments(figures[-1])) == [(-0.45, 0.45, 0.2), (0.55, 1.45, 0.45)]


def test_profile_band_not_clipped(figures: list[Any]) -> None:
    # a mask near 1 with a wide channel spread: the band reaches 1.1 and must stay in view
    profile = AxisProfile(mean=[0.9, 0.95, 0.97, 0.9], spread=[0.1, 0.15, 0.13, 0.1])
    block = _block("b", False, 0.3, profile)
    assert plots.profile_figure(_report([block]), block) is not None
    low, high = figures[-1].axes[0].get_ylim()
    assert high >= 0.95 + 0.15 and low <= 0.9 - 0.1


def test_overlay_absolute_scale_shows_a_collapsed_map_flat() -> None:
    image = np.full((16, 16), 0.5, dtype=np.float32)
    collapsed = np.linspace(0.22, 0.26, 64, dtype=np.float32).reshape(8, 8)
    absolute = plots.composite(image, collapsed, plots._scale_range([collapsed], "absolute"))
    stretched = plots.composite(image, collapsed, plots._scale_range([collapsed], "block"))
    assert plots._scale_range([collapsed], "absolute") == (0.0, 1.0)
    # on 0..1 a 0.04-wide map is nearly one colour; stretched, it spans most of the colour map
    def spread(rgb: np.ndarray) -> float:  # largest pixel-to-pixel range of one colour channel
        return float(np.ptp(rgb.reshape(-1, 3), axis=0).max())

    assert spread(absolute) < 0.05 < 0.2 < spread(stretched)


def test_overlay_scale_is_checked() -> None:
    from coordatt_diag.errors import UsageError
    from coordatt_diag.reports.folder import check_overlay_scale

    check_overlay_scale("absolute")
    check_overlay_scale("block")
    with pytest.raises(UsageError) as err:
        check_overlay_scale("log")
    assert "--overlay-scale" in err.value.cli_message()
