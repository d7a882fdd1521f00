"""scripts/validate.py: the table building on a tiny hand-made case (no training)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def validate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_script", ROOT / "scripts" / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_script"] = module
    spec.loader.exec_module(module)
    return module


def _rows(v: ModuleType) -> list:
    def block(std: float, codes: tuple[str, ...], ratio: float = 0.3, ident: bool = False):
        return v.BlockRow(name="b", min_std=std, std_ratio=ratio, identity_path=ident,
                          effect_const=0.4 if not codes else 0.01, effect_pos=0.2,
                          findings=codes)

    return [
        v.ModelRow("f", "healthy", 0, 0.99, (block(0.08, ()), block(0.1, ()))),
        v.ModelRow("g", "healthy", 0, 0.98, (block(0.015, ("near_constant",)),)),
        v.ModelRow("f", "collapsed", 0, 0.97, (block(0.01, ("dead_weight", "near_constant")),)),
        v.ModelRow("f", "saturated", 0, 0.99, (block(0.001, ("pass_through",), 0.9, True),)),
        v.ModelRow("f", "untrained", 0, 0.1, (block(0.05, ()),)),
    ]


def test_findings_table_counts_false_alarms_and_misses(validate: ModuleType) -> None:
    table = validate.findings_table(_rows(validate))
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
             for ln in table.splitlines()[2:]}
    # columns: healthy, collapsed, saturated, untrained
    assert lines["`near_constant`"] == ["1/2", "1/1", "0/1", "0/1"]
    assert lines["`dead_weight`"] == ["0/2", "1/1", "0/1", "0/1"]
    assert lines["`pass_through`"] == ["0/2", "0/1", "1/1", "0/1"]
    assert lines["any finding"] == ["1/2", "1/1", "1/1", "0/1"]
    assert lines["**nothing fired (misses)**"] == ["-", "0/1", "0/1", "1/1"]


def test_other_tables_and_doc_section(validate: ModuleType, tmp_path: Path) -> None:
    rows = _rows(validate)
    seed = validate.seed_rules_table(rows)
    healthy = next(ln for ln in seed.splitlines() if ln.startswith("| healthy"))
    assert "| 1/3 |" in healthy  # one of three healthy blocks below 0.02
    saturated = next(ln for ln in seed.splitlines() if ln.startswith("| saturated"))
    assert "| 0/1 |" in saturated  # its identity-path block has ratio 0.9 >= 0.45
    assert "0.400 (0.010-0.400)" in validate.effect_table(rows)
    assert "dead_weight, near_constant" in validate.models_table(rows)
    doc = tmp_path / "v.md"
    doc.write_text("# Title\n\nprose before\n\n<!-- validate:begin -->\nold\n<!-- validate:end -->"
                   "\n\nprose after\n")
    validate.write_doc(validate.build_section(rows, {"epochs": 1}), doc)
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert text.count("<!-- validate:begin -->") == 1 and "| `pass_through` |" in text


def test_saturate_sets_the_gate_biases(validate: ModuleType) -> None:
    for family in validate.FAMILIES:
        model = validate.Net(validate.FAMILIES[family], widths=(8, 16, 16))
        assert validate.saturate(model) >= 3, family
        with torch.no_grad():
            model.eval()(torch.zeros(2, 1, 16, 16))
