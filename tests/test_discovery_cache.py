"""Runs of several checkpoints discover each architecture once (`DiscoveryCache`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import coordatt_diag.runs.inspect as inspect_mod
from coordatt_diag.demo import digits_net
from coordatt_diag.runs.inspect import DiscoveryCache, InspectOptions, inspect_checkpoint
from coordatt_diag.runs.multirun import inspect_checkpoints
from tests.fixtures.compare import assert_close_tree

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _count_discoveries(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    real = inspect_mod.discover

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(inspect_mod, "discover", counted)
    return calls


def test_checkpoints_of_one_architecture_are_discovered_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    opts = InspectOptions(model="coordatt_diag.demo:digits_net",
                          tensors=EXAMPLES / "digits_samples.pt")
    paths = [EXAMPLES / "digits_healthy.pt", EXAMPLES / "digits_collapsed.pt"]
    alone = [inspect_checkpoint(p, opts) for p in paths]
    calls = _count_discoveries(monkeypatch)
    together = inspect_checkpoints(paths, opts)
    assert len(calls) == 1
    for a, b in zip(alone, together, strict=True):
        # same blocks, statistics and findings as one at a time; floats to float32 rounding
        # (a run alone reads its first batch in two parts: the discovery pass's samples, then
        # the rest)
        assert_close_tree([dataclasses.asdict(x) for x in a.blocks],
                          [dataclasses.asdict(x) for x in b.blocks], rel=1e-6, abs_=1e-9)


def test_the_key_tells_architectures_inputs_and_scalars_apart() -> None:
    torch.manual_seed(0)
    a, b = digits_net().eval(), digits_net().eval()  # other weights, same architecture
    x = torch.randn(2, 1, 16, 16)
    key = DiscoveryCache.key
    assert key(a, x, None) == key(b, x, None)
    assert key(a, x, None) != key(a, torch.randn(2, 1, 32, 32), None)
    assert key(a, x, None) != key(a, x, "att")
    assert key(a, x, None) != key(nn.Sequential(a), x, None)
    # a one-element parameter can decide what discovery sees (a learned blend of the mask)
    b.register_parameter("alpha", nn.Parameter(torch.tensor(0.0)))
    c = digits_net().eval()
    c.register_parameter("alpha", nn.Parameter(torch.tensor(1.0)))
    assert key(b, x, None) != key(c, x, None)


def test_cache_hit_skips_discovery_and_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DiscoveryCache()
    x = torch.randn(2, 1, 16, 16)
    first = cache.discover(digits_net().eval(), x)
    assert first.per_sample is not None and first.per_sample > 0
    calls = _count_discoveries(monkeypatch)
    again = cache.discover(digits_net().eval(), x)
    assert calls == [] and cache.hits == 1 and again == first
