"""Several checkpoints: an error names the file it happened on, and `trend` tells checkpoints
that record the same epoch apart (by file name) and plots them by order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from coordatt_diag.cli import app
from coordatt_diag.errors import CheckpointError, InputError
from coordatt_diag.reports.trend import write_plots
from coordatt_diag.runs.inspect import InspectOptions
from coordatt_diag.runs.multirun import inspect_checkpoints
from coordatt_diag.runs.trend import trend_checkpoints
from tests.fixtures import models as fx

FACTORY = "tests.fixtures.models:coord_pair_net"
FAST = ["--model", FACTORY, "--imgsz", "16", "--batch-size", "4", "--batches", "1"]
OPTS = InspectOptions(model=FACTORY, imgsz=16, batch_size=4, batches=1)


def _save(path: Path, epoch: int | None = None) -> Path:
    obj: dict[str, Any] = {"state_dict": fx.coord_pair_net().state_dict()}
    if epoch is not None:
        obj["epoch"] = epoch
    torch.save(obj, path)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})


def test_error_names_the_checkpoint(tmp_path: Path) -> None:
    good = _save(tmp_path / "digits_a.pt", epoch=1)
    samples = tmp_path / "digits_samples.pt"
    torch.save(torch.zeros(4, 3, 16, 16), samples)  # a glob that also picks up the samples
    with pytest.raises(CheckpointError) as err:
        inspect_checkpoints([good, samples], OPTS)
    assert str(err.value).startswith(f"{samples}: ") and "holds a Tensor" in str(err.value)
    # an input error on a later checkpoint names it too, and keeps its class and exit code
    whole = tmp_path / "whole.pt"
    torch.save(fx.coord_pair_net(), whole)
    wide = tmp_path / "wide.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(5, 4, 3), torch.nn.Sigmoid()), wide)
    with pytest.raises(InputError) as err2:
        inspect_checkpoints([whole, wide], InspectOptions(trust=True, tensors=str(samples)))
    assert str(err2.value).startswith(f"{wide}: ") and err2.value.exit_code == 3


def test_cli_error_names_the_checkpoint(runner: CliRunner, tmp_path: Path) -> None:
    _save(tmp_path / "digits_a.pt", epoch=1)
    torch.save(torch.zeros(4, 3, 16, 16), tmp_path / "digits_samples.pt")
    result = runner.invoke(app, ["trend", str(tmp_path / "digits_*.pt"), *FAST],
                           catch_exceptions=False)
    assert result.exit_code == 3
    assert f"error: {tmp_path / 'digits_samples.pt'}: " in result.stderr


def test_trend_same_epoch_told_apart_and_plotted_by_order(tmp_path: Path) -> None:
    _save(tmp_path / "last.pt", epoch=12)
    _save(tmp_path / "best.pt", epoch=12)
    _save(tmp_path / "epoch5.pt", epoch=5)
    trend = trend_checkpoints([str(tmp_path / "*.pt")], OPTS)
    assert [p.label for p in trend.points] == ["epoch 5", "epoch 12 (best.pt)",
                                               "epoch 12 (last.pt)"]
    assert not trend.by_epoch
    written = write_plots(trend, tmp_path / "plots")
    assert len(written) == 3
    # the figure's x axis: one tick per checkpoint at 0, 1, 2, labelled as above
    from matplotlib.figure import Figure

    captured: list[Any] = []
    real = Figure.savefig

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        captured.append(self)
        real(self, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(Figure, "savefig", keep)
    try:
        write_plots(trend, tmp_path / "plots2")
    finally:
        mp.undo()
    ax = captured[0].axes[0]
    assert list(ax.get_xticks()) == [0.0, 1.0, 2.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [p.label for p in trend.points]
    assert ax.get_xlabel() == "checkpoint, in epoch order"


def test_trend_same_epoch_same_name_uses_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _save(tmp_path / "a" / "last.pt", epoch=3)
    b = _save(tmp_path / "b" / "last.pt", epoch=3)
    trend = trend_checkpoints([a, b], OPTS)
    assert sorted(p.label for p in trend.points) == [f"epoch 3 ({a})", f"epoch 3 ({b})"]


def test_trend_distinct_epochs_plot_by_epoch(tmp_path: Path, runner: CliRunner) -> None:
    _save(tmp_path / "e1.pt", epoch=1)
    _save(tmp_path / "e4.pt", epoch=4)
    result = runner.invoke(app, ["trend", str(tmp_path / "e*.pt"), *FAST, "--json", "-"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)["points"]
    assert [p["label"] for p in points] == ["epoch 1", "epoch 4"]
