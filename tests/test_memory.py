"""Memory: activation estimate, refusal of a batch that would not fit, flat state over batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from coordatt_diag.cli import app
from coordatt_diag.demo import digits_net
from coordatt_diag.errors import InputError
from coordatt_diag.load import memory
from coordatt_diag.runs.inspect import run_batches
from coordatt_diag.stats.masks import FOLD_EVERY

ROOT = Path(__file__).resolve().parents[1]


def test_activation_peak_of_a_known_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    # conv1 out (8x16x16 floats) is alive while relu makes its own output, then freed
    per = memory.measure_activations(model, torch.randn(2, 3, 16, 16))
    assert per == 2 * 8 * 16 * 16 * 4


def test_in_place_ops_and_views_are_counted_once() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten()).eval()
    per = memory.measure_activations(model, torch.randn(2, 3, 16, 16))
    assert per == 8 * 16 * 16 * 4


def test_estimate_scales_with_the_batch() -> None:
    model = digits_net().eval()
    probe = torch.randn(2, 1, 16, 16)
    small = memory.estimate(model, probe, torch.randn(8, 1, 16, 16))
    big = memory.estimate(model, probe, torch.randn(64, 1, 16, 16))
    assert small.per_sample == big.per_sample > 0
    assert big.need == pytest.approx(8 * small.need, rel=0.01)
    assert small.available is None or small.available > 0


def test_batch_that_does_not_fit_is_refused_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    model = digits_net()
    probe = torch.randn(2, 1, 16, 16)
    per = memory.measure_activations(model.eval(), probe)
    monkeypatch.setattr(memory, "available_bytes", lambda device: per * 20)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(InputError, match=r"a batch of 64 inputs of 1x16x16 needs about .* use "
                                         r"batch_size=1[0-5] or fewer"):
        run_batches(model, [torch.randn(64, 1, 16, 16)] * 3)
    assert len(calls) == 2  # discovery and the measurement; no batch ran
    monkeypatch.setenv(memory.ENV_SWITCH, "0")
    run_batches(model, [torch.randn(64, 1, 16, 16)])


def test_cli_refusal_is_one_line_exit_3_and_writes_nothing(
        tmp_path: Path, runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["inspect", str(ROOT / "examples" / "digits_healthy.pt"), "--model",
                              "coordatt_diag.demo:digits_net", "--tensors",
                              str(ROOT / "examples" / "digits_samples.pt"), "--json", str(out)])
    assert res.exit_code == 3
    assert "not even one sample fits" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def _state_bytes(obj: Any, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_state_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v, seen) for v in obj)
    if type(obj).__module__.startswith("coordatt_diag.") and hasattr(obj, "__dict__"):
        return sum(_state_bytes(v, seen) for v in vars(obj).values())
    return 0


def test_run_state_does_not_grow_with_the_number_of_batches() -> None:
    model = digits_net()
    sizes = {}
    for n in (2 * FOLD_EVERY, 4 * FOLD_EVERY, 8 * FOLD_EVERY):
        gen = torch.Generator().manual_seed(n)
        state = run_batches(model, (torch.randn(4, 1, 16, 16, generator=gen) for _ in range(n)))
        sizes[n] = _state_bytes(state)
    assert sizes[2 * FOLD_EVERY] == sizes[4 * FOLD_EVERY] == sizes[8 * FOLD_EVERY] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_estimate_matches_the_cuda_allocator() -> None:
    model = digits_net().cuda().eval()
    x = torch.randn(64, 1, 16, 16, device="cuda")
    est = memory.estimate(model, x[:2], x)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        model(x)
    peak = torch.cuda.max_memory_allocated() - base
    assert 0.5 * peak <= est.per_sample * 64 <= 2 * peak


def test_discovery_counts_what_its_pass_allocates() -> None:
    from coordatt_diag.capture.engine import DISCOVERY_BATCH, trace_blocks

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 4)).eval()
    with torch.inference_mode():
        traced = trace_blocks(model, torch.randn(2, 3, 16, 16))
    assert traced.blocks == [] and traced.samples == DISCOVERY_BATCH
    # conv out and linear out; the in-place ReLU and the Flatten view allocate nothing
    assert traced.allocated == DISCOVERY_BATCH * (8 * 16 * 16 * 4 + 4 * 4)


def test_discovery_bound_is_never_below_the_measured_peak() -> None:
    from coordatt_diag.capture.engine import trace_blocks
    from tests.wild.corpus import CASES, build

    for case in CASES:
        model = build(case, 16)
        x = torch.randn(2, 3, 16, 16)
        with torch.inference_mode():
            traced = trace_blocks(model, x)
        peak = memory.measure_activations(model, x[:1])
        assert traced.allocated / traced.samples >= peak, case.id
        batch = torch.randn(64, 3, 16, 16)
        # the bound that lets the pre-check skip its pass is above the measured need
        assert traced.allocated * 64 / traced.samples >= memory.estimate(
            model, x[:1], batch, per_sample=peak).need / memory.MARGIN, case.id


def test_no_measuring_pass_when_the_batch_surely_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    model = digits_net()
    calls: list[int] = []
    model.register_forward_hook(lambda *a: calls.append(1))
    run_batches(model, [torch.randn(16, 1, 16, 16)] * 3)
    assert len(calls) == 1 + 3  # discovery and the batches
    # tight memory: the bound does not settle it, the exact pass runs, the batch still fits
    per = memory.measure_activations(model.eval(), torch.randn(1, 1, 16, 16))
    calls.clear()
    monkeypatch.setattr(memory, "available_bytes", lambda device: per * 16 * 2)
    run_batches(model, [torch.randn(16, 1, 16, 16)] * 3)
    assert len(calls) == 1 + 1 + 3
