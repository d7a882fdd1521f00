"""Leaf-by-leaf comparison of nested results (dicts, lists, numbers), independent of how one
pytest version's ``approx`` treats nesting."""

from __future__ import annotations

import math
from typing import Any


def assert_close(got: Any, want: Any, *, rel: float = 1e-6, abs_: float = 1e-12, path: str = "") -> None:
    """Assert that two nested structures have the same keys, lengths and non-numeric leaves,
    and numbers equal within ``rel``/``abs_``; the message names the first differing leaf."""
    where = path or "<root>"
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__} where a dict was expected"
        assert set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_close(got[key], want[key], rel=rel, abs_=abs_, path=f"{path}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple), f"{where}: {type(got).__name__} where a sequence was expected"
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, rel=rel, abs_=abs_, path=f"{path}[{i}]")
    elif isinstance(want, bool) or want is None or isinstance(want, str):
        assert got == want, f"{where}: {got!r} != {want!r}"
    elif isinstance(want, int | float):
        assert isinstance(got, int | float) and not isinstance(got, bool), f"{where}: {got!r} is not a number"
        if math.isnan(want):
            assert math.isnan(got), f"{where}: {got!r} != nan"
        else:
            assert math.isclose(got, want, rel_tol=rel, abs_tol=abs_), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
