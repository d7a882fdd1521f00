"""The mask effect under torchrun: every rank runs its share of the batches, the sums are merged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from coordatt_diag.cli import app
from tests.test_distributed import _assert_same, _torchrun

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ARGS = ["inspect", str(EXAMPLES / "digits_healthy.pt"), "--model", "coordatt_diag.demo:digits_net",
        "--tensors", str(EXAMPLES / "digits_samples.pt"), "--effect", "--batch-size", "16"]


def test_two_processes_measure_the_same_effect_as_one(tmp_path: Path, runner: Any) -> None:
    labels = ["--labels", str(EXAMPLES / "digits_labels.pt")]
    one = runner.invoke(app, [*ARGS, *labels, "--json", str(tmp_path / "one.json")])
    assert one.exit_code == 0, one.output
    two = _torchrun(2, [*ARGS, *labels, "--json", "two.json"], tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert b["tool"]["processes"] == 2
    effects = [blk["effect"] for blk in b["blocks"]]
    assert effects and all(e is not None and e["samples"] == 128 for e in effects)
    assert all(e["constant"]["accuracy_drop"] is not None for e in effects)
    _assert_same(a, b)  # statistics and effect alike, to float tolerance
    assert two.stdout.count("Mask effect") == 1  # rank 0 alone prints


def test_a_label_error_on_one_rank_fails_every_rank(tmp_path: Path) -> None:
    # 8 batches of 16: only the last one (rank 1's) holds a class the model does not have
    labels = torch.load(EXAMPLES / "digits_labels.pt")
    labels[-1] = 99
    torch.save(labels, tmp_path / "labels.pt")
    res = _torchrun(2, [*ARGS, "--labels", "labels.pt", "--json", "out.json"], tmp_path)
    assert res.returncode != 0  # torchrun exits 1 when a rank fails; the rank exits 3
    assert "exitcode  : 3" in res.stderr
    assert "rank 1: --labels holds class 99" in res.stderr
    assert not (tmp_path / "out.json").exists()
