"""Each finding is raised by a constructed case and not by a healthy one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordatt_diag import analyze_model
from coordatt_diag.errors import UsageError
from coordatt_diag.health.thresholds import ThresholdConfig, Thresholds, load_thresholds
from tests.fixtures.models import constructed_net

X = [torch.randn(4, 3, 12, 10, generator=torch.Generator().manual_seed(0))]

CASES = {
    "near_constant": dict(pos=0.01, chan=0.01),
    "pass_through": dict(bias=9.0),
    "suppression": dict(bias=-9.0),
    "dead_hard_gate": dict(bias=6.0, gate="hardsigmoid"),
    "position_blind": dict(pos=0.0, chan=2.0),
    "nonfinite": dict(bias=float("nan")),
    "low_std_ratio": dict(bias=-3.0, beta=1.0, pos=0.5),
}


def _codes(**kwargs: object) -> dict[str, str]:
    report = analyze_model(constructed_net(**kwargs), X)  # type: ignore[arg-type]
    block = report.blocks[0]
    return {f.code: f.severity for f in block.findings}


@pytest.mark.parametrize("healthy", [dict(), dict(beta=0.5), dict(gate="hardsigmoid")])
def test_healthy_blocks_raise_nothing(healthy: dict[str, object]) -> None:
    assert _codes(**healthy) == {}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_finding_fires_on_its_case(code: str) -> None:
    assert code in _codes(**CASES[code])


def test_near_constant_severity_and_message() -> None:
    report = analyze_model(constructed_net(pos=0.001, chan=0.001), X)
    f = next(f for f in report.blocks[0].findings if f.code == "near_constant")
    assert f.severity == "fail" and f.threshold == 0.01 and f.value is not None and f.value < 0.01
    assert "sits at 0.50" in f.message and "weight RMS" in f.message and "weight decay" in f.remedy
    assert report.summary.status == "fail" and report.summary.fail == 1


def test_suppression_fail_above_quarter() -> None:
    assert _codes(bias=-9.0)["suppression"] == "fail"
    assert _codes(bias=-2.6, pos=2.0, chan=1.0).get("suppression") == "warn"


def test_identity_path_decides_the_std_ratio_floor() -> None:
    # the same masks: purely multiplicative gets no floor, with an identity path it does
    assert "low_std_ratio" not in _codes(bias=-3.0, pos=0.5)
    assert "low_std_ratio" in _codes(bias=-3.0, pos=0.5, beta=1.0)


def test_thresholds_from_toml_and_per_block(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('[tool.coordatt-diag]\nnear_constant_warn = 0.5\n'
                   '[tool.coordatt-diag.blocks."^stage$"]\nnear_constant_warn = 0.001\n'
                   'near_constant_fail = 0.0005\n')
    conf = load_thresholds(cfg)
    assert conf.default.near_constant_warn == 0.5
    assert conf.for_block("stage").near_constant_warn == 0.001
    assert conf.for_block("other").near_constant_warn == 0.5
    report = analyze_model(constructed_net(), X, thresholds=ThresholdConfig(default=Thresholds(
        near_constant_warn=0.9, near_constant_fail=0.0)))
    assert [f.code for f in report.blocks[0].findings] == ["near_constant", "near_constant"]


def test_pyproject_table_is_read(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.coordatt-diag]\nsuppression_warn = 0.2\n')
    assert load_thresholds(None, cwd=tmp_path).default.suppression_warn == 0.2
    assert load_thresholds(None, cwd=tmp_path / "nowhere").default == Thresholds()


@pytest.mark.parametrize("text", ['[tool.coordatt-diag]\nnope = 1\n', 'x = [',
                                  '[tool.coordatt-diag]\nsuppression_warn = "a"\n',
                                  '[tool.coordatt-diag.blocks."("]\nsuppression_warn = 1\n'])
def test_bad_config_is_a_usage_error(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError):
        load_thresholds(cfg)
