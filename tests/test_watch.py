"""The mask watch during training (`coordatt_diag.watch.MaskWatch`) on the digits demo training.

The collapsing run is the demo's (`coordatt_diag.demo.train_sgd`, weight decay 1e-2 against the
healthy 5e-4), made small: 512 training digits, batch 16, 8 epochs (about 260 SGD steps, as many
as the demo's 12 epochs of batch 64). Measured: stage1.att and stage2.att a_h become near-constant
at epoch 2, a_w at epochs 3-4; stage3.att stays healthy; the healthy twin ends with no finding.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coordatt_diag.cli import app
from coordatt_diag.demo import DigitsSplit, digits_net, load_digits_split, train_sgd
from coordatt_diag.errors import UsageError
from coordatt_diag.runs.inspect import analyze_model
from coordatt_diag.runs.trend import read_history, trend_history
from coordatt_diag.watch import MaskWatch
from tests.fixtures.models import constructed_net

EPOCHS = 8
SAMPLES = 512
BATCH = 16
PROBE = 64
COLLAPSING, HEALTHY = 1e-2, 5e-4


class FakeWriter:
    """Records what a `SummaryWriter` would be given (tensorboard is not a test dependency)."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.histograms: dict[str, list[dict[str, Any]]] = {}
        self.flushes = 0

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append((step, value))

    def add_histogram_raw(self, tag: str, global_step: int, **kw: Any) -> None:
        self.histograms.setdefault(tag, []).append({"step": global_step, **kw})

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    full = load_digits_split(seed=0)
    return DigitsSplit(full.x_train[:SAMPLES], full.y_train[:SAMPLES], full.x_test[:PROBE],
                       full.y_test[:PROBE], full.mean, full.std)


def _watched_run(split: DigitsSplit, weight_decay: float, log_dir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = digits_net()
    lines: list[str] = []
    writer = FakeWriter()
    watch = MaskWatch(model, split.x_test, budget=None, log_dir=log_dir, log=lines.append, tensorboard=writer)
    results = []
    train_sgd(model, split, EPOCHS, weight_decay, seed=0, batch_size=BATCH,
              on_epoch=lambda epoch: results.append(watch.step(epoch)) or results[-1])
    watch.close()
    return {"model": model, "watch": watch, "lines": lines, "writer": writer, "results": results,
            "log_dir": log_dir}


@pytest.fixture(scope="module")
def collapsing(split: DigitsSplit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _watched_run(split, COLLAPSING, tmp_path_factory.mktemp("collapsing"))


def _near_constant(result: Any) -> set[tuple[str, str | None]]:
    return {(f.block, f.mask) for b in result.report.blocks for f in b.findings
            if f.code == "near_constant"}


def test_collapse_is_reported_with_the_epoch_it_appeared(collapsing: dict[str, Any]) -> None:
    watch, results = collapsing["watch"], collapsing["results"]
    assert [r.time.epoch for r in results] == list(range(EPOCHS))
    last = _near_constant(results[-1])
    assert {b for b, _ in last} == {"stage1.att", "stage2.att"}  # stage3.att stays healthy
    for block, mask in last:
        first = watch.first_seen[("near_constant", block, mask)]
        assert first.epoch is not None and first.epoch < EPOCHS - 1, (block, mask, first)
        # it was not there before that epoch, and it is there at every probe since
        assert all((block, mask) not in _near_constant(r) for r in results[:first.epoch])
        assert all((block, mask) in _near_constant(r) for r in results[first.epoch:])
        line = next(ln for ln in collapsing["lines"]
                    if ln.startswith(f"epoch {first.epoch}: {block} {mask} near_constant"))
        f = next(f for b in results[first.epoch].report.blocks for f in b.findings
                 if (f.block, f.mask, f.code) == (block, mask, "near_constant"))
        assert "first seen" in line and f"value {f.value:.4g}" in line
        assert f"threshold {f.threshold:.4g}" in line and f.remedy in line


def test_the_watch_computes_what_inspect_computes(collapsing: dict[str, Any],
                                                  split: DigitsSplit) -> None:
    # the model at the end of training against the last probe: the same numbers and findings
    report = analyze_model(collapsing["model"], [split.x_test])
    probed = collapsing["results"][-1].report
    for a, b in zip(report.blocks, probed.blocks, strict=True):
        # the same findings; their values to float32 rounding (the run alone reads the probe
        # batch in two parts: the discovery pass's samples, then the rest)
        assert [dataclasses.replace(f, value=None) for f in a.findings] == \
            [dataclasses.replace(f, value=None) for f in b.findings]
        for fa, fb in zip(a.findings, b.findings, strict=True):
            assert fa.value == pytest.approx(fb.value, rel=1e-6)
        for kind in a.masks:
            assert a.masks[kind].std == pytest.approx(b.masks[kind].std, rel=1e-6)
            assert a.masks[kind].pos_std == pytest.approx(b.masks[kind].pos_std, rel=1e-6)
        assert a.std_ratio is not None and b.std_ratio is not None
        assert a.std_ratio.mean == pytest.approx(b.std_ratio.mean, rel=1e-6)
    # independent check of one number: std of the a_h masks gathered by hand
    model = collapsing["model"]
    with torch.no_grad():
        model(split.x_test)
    att = model.stage1.att
    assert att._last_ah is not None
    assert probed.block("stage1.att").masks["a_h"].std == pytest.approx(
        float(att._last_ah.double().std()), rel=1e-4)


def test_log_lines_only_when_something_changes(collapsing: dict[str, Any]) -> None:
    lines, results = collapsing["lines"], collapsing["results"]
    assert lines[0].startswith("mask watch, epoch 0: 3 attention blocks (stage1.att, stage2.att, "
                               "stage3.att) on 64 probe samples")
    changes = sum(len(r.changes) for r in results)
    assert len(lines) == 1 + changes
    quiet = [r for r in results[1:] if not r.changes]
    assert quiet, "some probes changed nothing"
    for r in quiet:
        assert not any(ln.startswith(f"{r.time.label}:") for ln in lines)


def test_healthy_twin_gets_no_finding(split: DigitsSplit, tmp_path: Path) -> None:
    run = _watched_run(split, HEALTHY, tmp_path)
    assert all(not _near_constant(r) for r in run["results"])
    last = run["results"][-1].report
    assert [f for b in last.blocks for f in b.findings] == [] and last.summary.status == "ok"


def test_history_is_one_report_per_probe_in_the_schema(collapsing: dict[str, Any],
                                                       validate_report: Any) -> None:
    path = collapsing["log_dir"] / "history.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == EPOCHS
    for epoch, line in enumerate(lines):
        data = json.loads(line)
        validate_report(data)
        assert data["checkpoint"]["epoch"] == epoch
    reports = read_history(path)
    assert [r.checkpoint.epoch for r in reports] == list(range(EPOCHS))
    assert reports[-1].block("stage1.att").findings == collapsing["results"][-1].report.block(
        "stage1.att").findings


def test_trend_reads_the_history_and_marks_first_appearance(collapsing: dict[str, Any],
                                                            runner: Any, tmp_path: Path) -> None:
    path = collapsing["log_dir"] / "history.jsonl"
    trend = trend_history(path)
    assert [p.label for p in trend.points] == [f"epoch {e}" for e in range(EPOCHS)]
    watch = collapsing["watch"]
    marks = {(f.code, f.block, f.mask): f.point for f in trend.first_seen}
    assert marks == {key: t.epoch for key, t in watch.first_seen.items()}
    s1 = next(b for b in trend.blocks if b.name == "stage1.att")
    assert s1.masks["a_h"].std == [r.report.block("stage1.att").masks["a_h"].std
                                   for r in collapsing["results"]]
    result = runner.invoke(app, ["trend", str(path), "--json", "-", "--out", str(tmp_path / "p")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["points"]) == EPOCHS and data["first_seen"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "mask_std.png", "pos_std.png", "std_ratio.png"]
    shown = runner.invoke(app, ["trend", str(path)], catch_exceptions=False)
    first = watch.first_seen[("near_constant", "stage1.att", "a_h")]
    assert f"{first.label:<12} stage1.att a_h near_constant" in shown.stdout
    refused = runner.invoke(app, ["trend", str(path), "--synthetic", "--batches", "2"])
    assert refused.exit_code == 2 and "do not apply" in refused.stderr


def test_report_from_json_reads_the_latest_probe(collapsing: dict[str, Any], runner: Any,
                                                 tmp_path: Path) -> None:
    path = collapsing["log_dir"] / "history.jsonl"
    out = tmp_path / "diag"
    result = runner.invoke(app, ["report", "--from-json", str(path), "--out", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "report.json").read_text())
    assert saved["checkpoint"]["epoch"] == EPOCHS - 1
    assert saved["summary"] == json.loads(path.read_text().splitlines()[-1])["summary"]


def test_tensorboard_scalars_and_histograms(collapsing: dict[str, Any]) -> None:
    writer, results = collapsing["writer"], collapsing["results"]
    std = writer.scalars["mask_health/stage1.att/a_h/std"]
    assert std == [(e, r.report.block("stage1.att").masks["a_h"].std)
                   for e, r in enumerate(results)]
    ratio = writer.scalars["mask_health/stage2.att/std_ratio"]
    assert [v for _, v in ratio] == [r.report.block("stage2.att").std_ratio.mean  # type: ignore[union-attr]
                                     for r in results]
    assert len(writer.scalars["mask_health/stage3.att/a_w/pos_std"]) == EPOCHS
    assert [v for _, v in writer.scalars["mask_health/status"]] == [
        {"ok": 0, "warn": 1, "fail": 2}[r.report.summary.status] for r in results]
    hist = writer.histograms["mask_health/stage1.att/a_h"][-1]
    m = results[-1].report.block("stage1.att").masks["a_h"]
    assert hist["bucket_counts"] == m.hist and hist["num"] == m.count == sum(m.hist)
    assert hist["sum"] == pytest.approx(m.mean * m.count)


def _noisy_digits_net() -> nn.Module:
    """The digits net with a stem that draws random numbers in every forward pass, eval too
    (torch, Python and NumPy generators), so a probe that did not restore them would shift the
    training's random stream."""

    class NoisyStem(nn.Module):
        def __init__(self, stem: nn.Module) -> None:
            super().__init__()
            self.stem = stem

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            jitter = 0.01 * (random.random() + float(np.random.rand()))
            return self.stem(x + jitter * torch.randn_like(x))

    model = digits_net()
    model.stem = NoisyStem(model.stem)  # type: ignore[assignment]
    return model


def _plain_loop(split: DigitsSplit, watch_it: bool, epochs: int = 3) -> tuple[list[float], Any]:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = _noisy_digits_net()
    model.stem.stem[1].eval()  # a frozen batch norm: a flag the watch must leave as it is
    model.stem.stem[1].train = lambda mode=True: model.stem.stem[1]  # type: ignore[method-assign]
    watch = MaskWatch(model, split.x_test, budget=None, log=None, tensorboard=False) if watch_it else None
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=COLLAPSING)
    x, y = split.x_train[:128], split.y_train[:128]
    losses: list[float] = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            loss = F.cross_entropy(F.dropout(model(x[idx]), 0.1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if watch is not None:
            flags = {n: m.training for n, m in model.named_modules()}
            grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            assert watch.step(epoch) is not None
            assert {n: m.training for n, m in model.named_modules()} == flags
            assert model.training and not model.stem.stem[1].training
            after = [p.grad for p in model.parameters() if p.grad is not None]
            assert all(torch.equal(a, b) for a, b in zip(after, grads, strict=True))
    draws = (float(torch.rand(1)), random.random(), float(np.random.rand()))
    return losses, (draws, model(x[:4]).detach())


def test_watching_changes_neither_losses_nor_random_stream(split: DigitsSplit) -> None:
    plain, (draws, out) = _plain_loop(split, watch_it=False)
    watched, (draws_w, out_w) = _plain_loop(split, watch_it=True)
    assert watched == plain  # the same loss curve, bit for bit
    assert draws_w == draws
    torch.testing.assert_close(out_w, out, rtol=0, atol=0)


def test_stop_on_fail_ends_a_plain_loop(tmp_path: Path) -> None:
    model = constructed_net(pos=0.0, chan=0.0)  # masks at sigmoid(0) = 0.5 everywhere: collapsed
    lines: list[str] = []
    watch = MaskWatch(model, torch.randn(4, 3, 16, 16), budget=None, log_dir=tmp_path, stop_on="fail",
                      log=lines.append, tensorboard=False)
    ran = []
    for epoch in range(5):
        ran.append(epoch)
        result = watch.step(epoch)
        if result is not None and result.stop:
            break
    assert ran == [0] and watch.should_stop
    assert lines[-1] == ("epoch 0: mask health is FAIL, at or above stop_on='fail': asking the "
                         "training to stop")
    healthy = MaskWatch(constructed_net(), torch.randn(4, 3, 16, 16), budget=None, stop_on="fail", log=None)
    assert healthy.step(0) is not None and not healthy.should_stop


def test_stop_on_ends_the_demo_training(split: DigitsSplit) -> None:
    torch.manual_seed(0)
    model = digits_net()
    watch = MaskWatch(model, split.x_test, budget=None, stop_on="warn", log=None)
    epochs: list[int] = []

    def on_epoch(epoch: int) -> Any:
        epochs.append(epoch)
        return watch.step(epoch)

    train_sgd(model, split, EPOCHS, COLLAPSING, seed=0, batch_size=BATCH, on_epoch=on_epoch)
    assert watch.should_stop and watch.last is not None and watch.last.stop
    assert watch.last.report.summary.status != "ok"
    assert len(epochs) < EPOCHS and epochs[-1] == watch.last.time.epoch


def test_every_and_ranks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = constructed_net()
    watch = MaskWatch(model, torch.randn(4, 3, 16, 16), budget=None, every=3, log=None, log_dir=tmp_path)
    done = [watch.step(e) is not None for e in range(7)]
    assert done == [True, False, False, True, False, False, True]
    monkeypatch.setenv("RANK", "1")  # another DDP rank: nothing probed, nothing written
    other = MaskWatch(model, torch.randn(4, 3, 16, 16), budget=None, log=None, log_dir=tmp_path / "rank1")
    assert other.step(0) is None and not (tmp_path / "rank1").exists()


def test_probe_from_a_tensors_file_and_bad_options(tmp_path: Path) -> None:
    from coordatt_diag.errors import UsageError

    torch.save(torch.randn(40, 3, 16, 16), tmp_path / "probe.pt")
    watch = MaskWatch(constructed_net(), tmp_path / "probe.pt", budget=None, samples=20, log=None)
    result = watch.step(0)
    assert result is not None and result.report.inputs.samples == 20
    with pytest.raises(UsageError):
        MaskWatch(constructed_net(), torch.randn(2, 3, 8, 8), budget=None, stop_on="error")
    with pytest.raises(UsageError):
        MaskWatch(constructed_net(), torch.randn(2, 3, 8, 8), budget=None, tensorboard=True)


def test_history_reader_skips_a_cut_last_line(collapsing: dict[str, Any], tmp_path: Path) -> None:
    from coordatt_diag.errors import InputError

    lines = (collapsing["log_dir"] / "history.jsonl").read_text().splitlines(keepends=True)
    cut = tmp_path / "history.jsonl"
    cut.write_text("".join(lines[:3]) + lines[3][:100])
    assert len(read_history(cut)) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "{not json}\n")
    with pytest.raises(InputError, match="bad.jsonl:2"):
        read_history(bad)


def test_config_file_and_wrapped_model(tmp_path: Path) -> None:
    """`config=` is `--config`: the same file gives the same thresholds and findings as inspect."""
    from coordatt_diag.health.thresholds import load_thresholds

    config = tmp_path / "health.toml"
    config.write_text("near_constant_warn = 0.9\nnear_constant_fail = 0.5\n")
    model, x = constructed_net(), torch.randn(4, 3, 16, 16)
    watch = MaskWatch(nn.DataParallel(model), x, budget=None, config=config, log=None)
    result = watch.step(0)
    assert result is not None
    expected = analyze_model(model, [x], thresholds=load_thresholds(config))
    assert result.report.thresholds == expected.thresholds
    assert result.report.thresholds["near_constant_warn"] == 0.9
    assert [b.name for b in result.report.blocks] == [b.name for b in expected.blocks]
    assert [b.findings for b in result.report.blocks] == [b.findings for b in expected.blocks]
    assert any(f.code == "near_constant" for b in result.report.blocks for f in b.findings)


def test_ultralytics_callbacks_on_a_trainer_double(tmp_path: Path) -> None:
    """The callbacks' logic without Ultralytics (the real training is in tests/integration): the
    EMA copy is probed, the final validation's extra on_fit_epoch_end is not, stop_on sets
    trainer.stop, the files go to <save_dir>/mask-health."""
    from types import SimpleNamespace

    from coordatt_diag.integrations.ultralytics import watch_training

    class YoloDouble:
        def __init__(self) -> None:
            self.callbacks: dict[str, list[Any]] = {}

        def add_callback(self, event: str, fn: Any) -> None:
            self.callbacks.setdefault(event, []).append(fn)

        def run(self, event: str, trainer: Any) -> None:
            for fn in self.callbacks.get(event, []):
                fn(trainer)

    collapsed = constructed_net(pos=0.0, chan=0.0)
    trainer = SimpleNamespace(model=constructed_net(), ema=SimpleNamespace(ema=collapsed),
                              args=SimpleNamespace(imgsz=16), save_dir=str(tmp_path), epoch=0,
                              stop=False)
    yolo, lines = YoloDouble(), []
    callbacks = watch_training(yolo, budget=None, probe_images=torch.randn(4, 3, 16, 16), stop_on="fail",
                               log=lines.append, tensorboard=False)
    for epoch in range(2):
        trainer.epoch = epoch
        yolo.run("on_train_epoch_start", trainer)
        yolo.run("on_fit_epoch_end", trainer)
    trainer.epoch = 2  # final_eval(): epoch + 1, outside any epoch
    yolo.run("on_fit_epoch_end", trainer)
    yolo.run("on_train_end", trainer)
    watch = callbacks.watch
    assert watch is not None and watch.probes == 2 and watch.closed
    assert trainer.stop and watch.last is not None and watch.last.report.summary.status == "fail"
    history = read_history(tmp_path / "mask-health" / "history.jsonl")
    assert [r.checkpoint.epoch for r in history] == [0, 1]
    assert any("asking the training to stop" in ln for ln in lines)


class _Clock:
    """A fake wall clock: the training advances it between steps, each probe by `probe_cost`."""

    def __init__(self, probe_cost: float) -> None:
        self.now = 0.0
        self.probe_cost = probe_cost

    def __call__(self) -> float:
        return self.now


def _timed_watch(budget: float | None, probe_cost: float) -> tuple[MaskWatch, _Clock]:
    clock = _Clock(probe_cost)
    watch = MaskWatch(constructed_net(), torch.randn(4, 3, 16, 16), budget=budget, log=None)
    watch._clock = clock
    watch._started = clock.now
    real_probe = watch.probe

    def probe(model: nn.Module, when: object = None) -> object:
        clock.now += clock.probe_cost
        return real_probe(model, when)  # type: ignore[arg-type]

    watch.probe = probe  # type: ignore[method-assign]
    return watch, clock


def test_the_default_budget_keeps_probes_under_one_percent_of_the_training_time() -> None:
    watch, clock = _timed_watch(0.01, probe_cost=1.0)  # a probe costs 10 % of a 10 s epoch
    for epoch in range(300):
        clock.now += 10.0  # one epoch of training
        watch.step(epoch)
    training = 300 * 10.0
    spent = watch.probes * 1.0
    assert watch.probes >= 3 and watch.skipped == 300 - watch.probes
    # the first probe is free of the budget; after it the share never exceeds 1 %
    assert spent - 1.0 <= 0.01 * training
    assert spent >= 0.5 * 0.01 * training  # and the budget is used, not wasted


def test_a_cheap_probe_runs_every_epoch_and_no_budget_probes_always() -> None:
    cheap, clock = _timed_watch(0.01, probe_cost=0.05)  # 0.5 % of an epoch: within the budget
    for epoch in range(20):
        clock.now += 10.0
        cheap.step(epoch)
    assert cheap.probes == 20 and cheap.skipped == 0
    dear, clock = _timed_watch(None, probe_cost=5.0)
    for epoch in range(5):
        clock.now += 10.0
        dear.step(epoch)
    assert dear.probes == 5 and dear.skipped == 0


def test_a_budget_outside_zero_to_one_is_refused() -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UsageError, match="budget"):
            MaskWatch(constructed_net(), torch.randn(2, 3, 8, 8), budget=bad, log=None)
