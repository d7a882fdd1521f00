"""scripts/validate.py: tasks, families, conditions and the study's own effect (fast), and a small
subset of the whole study end to end (slow)."""

from __future__ import annotations

import importlib.util
import json
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


@pytest.mark.parametrize("task", ["shapes", "textures"])
def test_tasks_are_generated_offline_and_deterministic(validate: ModuleType, task: str) -> None:
    x, y = validate.TASKS[task](120, 7)
    x2, y2 = validate.TASKS[task](120, 7)
    assert x.shape == (120, 1, validate.SIZE, validate.SIZE) and torch.equal(x, x2)
    assert torch.equal(y, y2) and set(y.tolist()) == set(range(validate.CLASSES))


def test_every_family_runs_and_its_gates_can_be_replaced(validate: ModuleType) -> None:
    x, y = validate.make_shapes(40, 3)
    for name, family in validate.FAMILIES.items():
        torch.manual_seed(0)
        model = validate.Net(family.make).eval()
        effects = validate.own_effect(model, x, y)
        assert set(effects) == {"stage1.att", "stage2.att", "stage3.att"}, name
        for e in effects.values():
            # a random block's masks do change the logits: the replacement reached the gates
            assert e["rel_l2"] > 0 and 0 < e["gate_mean"] < 1, (name, e)


def test_conditions_break_the_heads(validate: ModuleType) -> None:
    x = validate.make_shapes(64, 5)[0]
    for name, family in validate.FAMILIES.items():
        if "saturated" in family.conditions:
            torch.manual_seed(0)
            model = validate.Net(family.make)
            block = model.stage1.att
            before = [h.weight.detach().clone() for h in validate._heads(block)]
            assert before, name
            share = validate.saturate(model, block, x)
            # the gain grows until half the gate outputs sit at 0 or 1 (the study's own count)
            assert share >= 0.5, (name, share)
            assert share == validate.gate_saturation(model, block, x)
            for w0, h in zip(before, validate._heads(block), strict=True):
                gain = float(h.weight.abs().sum() / w0.abs().sum())
                assert gain >= validate.SATURATE_GAIN * 0.999, (name, gain)
            assert not any(p.requires_grad for p in block.parameters())
        if "suppressing" in family.conditions:
            block = family.make(16)
            validate.prepare(block, "suppressing")
            assert all(float(h.bias.max()) == validate.SUPPRESS_BIAS
                       for h in validate._heads(block))
        if "untrained" in family.conditions:
            block = family.make(16)
            assert validate.prepare(block, "untrained") == validate.HEALTHY_WD
            assert not any(p.requires_grad for p in block.parameters())
        if "collapsed" in family.conditions:
            assert validate.prepare(family.make(16), "collapsed") == validate.COLLAPSE_WD


def test_a_weak_head_needs_more_gain_to_saturate(validate: ModuleType) -> None:
    torch.manual_seed(0)
    model = validate.Net(validate.FAMILIES["se"].make)
    block = model.stage1.att
    with torch.no_grad():
        block.fc2.weight.mul_(0.1)  # a weak head: 25x is not enough
    w0 = block.fc2.weight.detach().clone()
    x = validate.make_shapes(64, 5)[0]
    assert validate.saturate(model, block, x) >= 0.5
    assert float(block.fc2.weight.abs().sum() / w0.abs().sum()) > validate.SATURATE_GAIN * 1.5


def test_selective_kernel_collapse_spares_its_branches(validate: ModuleType) -> None:
    block = validate.FAMILIES["sk"].make(16)
    att = {id(p) for p in validate.attention_params(block)}
    assert not any(id(p) in att for p in block.paths.parameters())
    assert all(id(p) in att for p in block.select.parameters())


def test_cells_a_family_cannot_be_built_in_are_skipped(validate: ModuleType) -> None:
    todo = validate.plan(["simam", "sk"], ["shapes"], list(validate.MODEL_CONDITIONS), 1)
    cells = {(f, c) for _, f, c, _ in todo}
    assert ("simam", "healthy") in cells and ("simam", "mixed") not in cells
    assert ("sk", "suppressing") not in cells and ("sk", "mixed") in cells
    for seed in range(len(validate.MIXES)):
        assert "suppressing" not in validate.block_conditions("mixed", seed, "sk", "shapes")


def test_labels_follow_the_studys_own_measures(validate: ModuleType) -> None:
    moved = {"rel_l2": 0.3, "acc_drop": 0.05, "moved": 0.2, "gate_ends": 0.0}
    assert validate.label_of("healthy", moved) == "healthy"
    assert validate.label_of("healthy", {**moved, "moved": 0.01}) == validate.BARELY
    # a collapse whose masks still matter did not take; one that does not matter did
    assert validate.label_of("collapsed", moved) == validate.UNBROKEN
    assert validate.label_of("collapsed", {**moved, "rel_l2": 0.01, "acc_drop": 0.0}) == "collapsed"
    assert validate.label_of("saturated", moved) == validate.UNBROKEN
    assert validate.label_of("saturated", {**moved, "gate_ends": 0.7}) == "saturated"
    assert validate.label_of("untrained", moved) == "untrained"


def test_write_doc_keeps_the_prose(validate: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "v.md"
    doc.write_text("# Title\n\nprose before\n\n<!-- validate:begin -->\nold\n<!-- validate:end -->"
                   "\n\nprose after\n")
    validate.write_doc(validate.BEGIN + "\nnew\n" + validate.END, doc)
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert text.count("<!-- validate:begin -->") == 1 and "new" in text


@pytest.mark.slow
def test_a_small_study_end_to_end(validate: ModuleType, tmp_path: Path) -> None:
    """Two families, two conditions, one task, short training: every untrained block is
    flagged, the tables are written, and re-judging the saved data gives the same numbers."""
    out, data = tmp_path / "v.md", tmp_path / "v.json"
    args = ["--families", "se", "coordatt", "--tasks", "shapes", "--conditions", "healthy",
            "untrained", "--epochs", "2", "--train", "300", "--test", "100", "--out", str(out),
            "--data", str(data), "--jobs", "2"]
    assert validate.main(args) == 0
    saved = json.loads(data.read_text())
    assert len(saved["records"]) == 4
    rows = validate.rows_of(saved["records"], validate.ThresholdConfig())
    summary = validate.summary(rows)
    assert summary["untrained"] == 6 and summary["untrained_flagged"] == 6, summary
    text = out.read_text()
    assert "### Confusion table" in text and "| untrained | 6 |" in text
    assert validate.main(["--rejudge", "--data", str(data), "--out", str(out)]) == 0
    assert out.read_text().split("Generated by")[1] == text.split("Generated by")[1]
