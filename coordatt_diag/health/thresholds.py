"""The thresholds the health findings are judged with, in one table, and their TOML overrides.

Defaults come from a collapse experiment (CoordAtt nets trained on a small digit task, collapse
induced by strong weight decay): collapsed masks had std 0.0045-0.019, healthy ones >= 0.06.

Overrides come from `--config FILE` (keys at the top level or under `[tool.coordatt-diag]`), or
else from `[tool.coordatt-diag]` in `./pyproject.toml`. A `[tool.coordatt-diag.blocks."REGEX"]`
table overrides thresholds for the blocks whose name matches REGEX (`re.search`; later tables
win).

    [tool.coordatt-diag]
    near_constant_warn = 0.02

    [tool.coordatt-diag.blocks."model\\.9\\..*"]
    suppression_warn = 0.10
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from coordatt_diag.errors import UsageError


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of `coordatt_diag.health.rules` (the README's thresholds table).

    Attributes:
        near_constant_warn: a mask std below this is a near-constant mask (warn).
        near_constant_fail: below this, fail.
        near_constant_mean_low: near-constant is judged only while the mean is above this ...
        near_constant_mean_high: ... and below this (else it is a saturation finding).
        pass_through_share: share of values >= 0.99 above which the block passes everything (warn).
        suppression_warn: share of values <= 0.01 above which the block suppresses (warn) ...
        suppression_fail: ... and above which it fails.
        dead_gate_share: share of values exactly 0 or 1 above which a hard gate is dead (warn).
        position_blind_pos_std: positional std below this ...
        position_blind_chan_std: ... while the channel std is at least this: position-blind (warn).
        std_ratio_floor: std ratio floor for blocks with an identity path (the seed's r_min, warn).
        std_ratio_floor_multiplicative: floor for purely multiplicative blocks; 0 disables it (the
            default: a healthy multiplicative CoordAtt measured 0.24-0.27).
        router_lock_share: a router's mean share of one branch at or above this: locked (warn).
        clamp_pinned_share: share of scale values at a clamp bound above this: pinned (warn).
        alpha_off: a blending alpha below this: the block switched itself off (warn).
        untrained_head_std: the init std of seed 001 heads (0.01); heads whose weight std is
            within `untrained_head_tolerance` of their init std (this, or PyTorch's default init
            for seed 000 `conv_h` / `conv_w`) ...
        untrained_head_tolerance: ... (|std/init - 1| below this) make a near-constant mask
            "untrained", not "collapsed" (0 disables it).
        dead_weight_effect: replacing a block's masks by a constant (`--effect`) changes the
            model output by less than this (relative L2): the block is dead weight (warn).
    """

    near_constant_warn: float = 0.03
    near_constant_fail: float = 0.01
    near_constant_mean_low: float = 0.05
    near_constant_mean_high: float = 0.95
    pass_through_share: float = 0.50
    suppression_warn: float = 0.05
    suppression_fail: float = 0.25
    dead_gate_share: float = 0.50
    position_blind_pos_std: float = 0.005
    position_blind_chan_std: float = 0.02
    std_ratio_floor: float = 0.45
    std_ratio_floor_multiplicative: float = 0.0
    router_lock_share: float = 0.95
    clamp_pinned_share: float = 0.50
    alpha_off: float = 0.05
    untrained_head_std: float = 0.01
    untrained_head_tolerance: float = 0.5
    dead_weight_effect: float = 0.01

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ThresholdConfig:
    """The thresholds for the whole model plus per-block overrides by name pattern."""

    default: Thresholds = field(default_factory=Thresholds)
    per_block: tuple[tuple[str, Thresholds], ...] = ()
    source: str | None = None

    def for_block(self, name: str) -> Thresholds:
        """The thresholds that apply to the block called `name`."""
        chosen = self.default
        for pattern, th in self.per_block:
            if re.search(pattern, name):
                chosen = th
        return chosen

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.default.to_dict()
        if self.per_block:
            out["blocks"] = {p: _diff(th, self.default) for p, th in self.per_block}
        if self.source:
            out["source"] = self.source
        return out


def _diff(th: Thresholds, base: Thresholds) -> dict[str, float]:
    a, b = th.to_dict(), base.to_dict()
    return {k: v for k, v in a.items() if b[k] != v}


_NAMES = {f.name for f in fields(Thresholds)}


def _apply(base: Thresholds, table: dict[str, Any], where: str) -> Thresholds:
    values: dict[str, float] = {}
    for key, value in table.items():
        if key == "blocks":
            continue
        if key not in _NAMES:
            raise UsageError(
                f"unknown threshold {key!r} in {where}; known: {', '.join(sorted(_NAMES))}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"threshold {key!r} in {where} must be a number, got {value!r}")
        values[key] = float(value)
    return dataclasses.replace(base, **values)


def load_thresholds(config: str | os.PathLike[str] | None = None,
                    cwd: Path | None = None) -> ThresholdConfig:
    """Read the thresholds from `config`, else from `[tool.coordatt-diag]` in ./pyproject.toml.

    Args:
        config: a TOML file named with `--config` (`str` or `Path`).
        cwd: where to look for pyproject.toml (default: the current directory).

    Returns:
        The defaults with the overrides applied.

    Raises:
        UsageError: the file cannot be read or parsed, a key is unknown, or a pattern is invalid.
    """
    if config is None:
        pyproject = (cwd or Path.cwd()) / "pyproject.toml"
        if not pyproject.is_file():
            return ThresholdConfig()
        data = _read_toml(pyproject)
        table = data.get("tool", {}).get("coordatt-diag")
        if not table:
            return ThresholdConfig()
        source = str(pyproject)
    else:
        config = Path(config)
        data = _read_toml(config)
        table = data.get("tool", {}).get("coordatt-diag", data)
        source = str(config)
    if not isinstance(table, dict):
        raise UsageError(f"[tool.coordatt-diag] in {source} must be a table")
    default = _apply(Thresholds(), table, source)
    per_block = []
    for pattern, sub in (table.get("blocks") or {}).items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"invalid block pattern {pattern!r} in {source}: {exc}") from exc
        if not isinstance(sub, dict):
            raise UsageError(f"blocks.{pattern!r} in {source} must be a table")
        per_block.append((pattern, _apply(default, sub, f"{source} blocks.{pattern!r}")))
    return ThresholdConfig(default=default, per_block=tuple(per_block), source=source)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise UsageError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from exc
