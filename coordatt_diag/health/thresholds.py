"""The thresholds the health findings are judged with, in one table, and their TOML overrides.

Defaults come from the validation study (`scripts/validate.py`, `docs/validation.md`: small
models of seven block families on two generated tasks, healthy and broken in five ways).

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
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from coordatt_diag.errors import UsageError, show_path


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of `coordatt_diag.health.rules` (the README's thresholds table).

    Attributes:
        near_constant_warn: a positional mask (a_h, a_w, a_hw, spatial) whose std is below this
            is near-constant (warn) ...
        near_constant_fail: ... and below this fails (without `--effect`; with it, the mask
            effect decides: fail only when replacing the masks by a constant changes the output
            by less than `dead_weight_effect`).
        near_constant_channel_warn: the same for channel masks (one value per channel: their std
            runs lower than a positional mask's) and branch weights (`select`) ...
        near_constant_channel_fail: ... and its fail level.
        near_constant_mean_low: near-constant is judged only while the mean is above this ...
        near_constant_mean_high: ... and below this (else it is a saturation finding).
        pass_through_share: share of values >= 0.99 above which the mask passes everything (warn).
        suppression_warn: share of values <= 0.01 above which the mask suppresses (warn) ...
        suppression_fail: ... and above which it fails, if the mask is also uninformative.
        saturated_share: share of values at either end (<= 0.01 or >= 0.99) above which ...
        saturated_side: ... with at least this share at each end, the mask is saturated (warn;
            fail if it is also uninformative).
        uninformative_sample_std: a mask whose per-channel mean varies over the inputs by less
            than this (std over samples, `sample_std`) and whose positional std is below it too
            is constant per channel over inputs: it carries no information about the input.
        dead_gate_share: share of values exactly 0 or 1 above which a hard gate is dead (warn).
        position_blind_pos_std: positional std below this ...
        position_blind_chan_std: ... while the channel std is at least this: position-blind (warn).
        std_ratio_floor: for a block with an identity path, the floor of its std ratio measured
            on its own blend's range: (ratio - s) / (1 - s) below this warns, s being the least
            scale the block can output (`scale_floor`, 1 - alpha * beta; 0 when unknown).
        std_ratio_floor_multiplicative: the same floor for purely multiplicative blocks; 0
            disables it (the default: their ratio follows the mask mean, not a pathology).
        router_lock_share: a router's mean share of one branch at or above this: locked (warn).
        branch_locked_share: share of branch weights (`select` masks: SK, EPSA, LSK) at 0 or 1
            (<= 0.01 or >= 0.99) at or above this: the selection is locked (warn).
        clamp_pinned_share: share of scale values at a clamp bound above this: pinned (warn).
        alpha_off: a blending alpha whose magnitude is below this: the block switched itself off
            (warn).
        untrained_mask_saturation: the untrained finding needs every mask to keep less than this
            share of its values at either end (random heads give unsaturated masks) ...
        untrained_min_values: ... and at least this many weight values checked (fewer cannot
            tell a trained tensor from an initialised one).
        dead_weight_effect: replacing a block's masks by a constant (`--effect`) changes the
            model output by less than this (relative L2): the block is dead weight (warn); at or
            above it the masks carry information (no fail for near-constant or saturated masks).
        dead_weight_accuracy: with labels, a replacement that costs at least this much accuracy
            (0.01: one point) means the masks carry information whatever the relative L2 says;
            0 turns the accuracy test off.
    """

    near_constant_warn: float = 0.03
    near_constant_fail: float = 0.01
    near_constant_channel_warn: float = 0.015
    near_constant_channel_fail: float = 0.005
    near_constant_mean_low: float = 0.05
    near_constant_mean_high: float = 0.95
    pass_through_share: float = 0.50
    suppression_warn: float = 0.05
    suppression_fail: float = 0.25
    saturated_share: float = 0.50
    saturated_side: float = 0.05
    uninformative_sample_std: float = 0.01
    dead_gate_share: float = 0.50
    position_blind_pos_std: float = 0.005
    position_blind_chan_std: float = 0.02
    std_ratio_floor: float = 0.10
    std_ratio_floor_multiplicative: float = 0.0
    router_lock_share: float = 0.95
    branch_locked_share: float = 0.50
    clamp_pinned_share: float = 0.50
    alpha_off: float = 0.05
    untrained_mask_saturation: float = 0.50
    untrained_min_values: float = 32
    dead_weight_effect: float = 0.05
    dead_weight_accuracy: float = 0.01

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


_FIELDS = {f.name: f for f in fields(Thresholds)}
_NAMES = set(_FIELDS)
#: Thresholds on a mask's values, means or shares, which lie in [0, 1] (besides every `*_share`).
_UNIT = frozenset({
    "near_constant_warn", "near_constant_fail", "near_constant_mean_low",
    "near_constant_mean_high", "suppression_warn", "suppression_fail", "position_blind_pos_std",
    "position_blind_chan_std", "alpha_off", "dead_weight_accuracy",
})
#: (lower, upper) pairs that must stay in order, e.g. a fail level below its warn level.
_ORDERED = (
    ("near_constant_fail", "near_constant_warn"),
    ("near_constant_mean_low", "near_constant_mean_high"),
    ("suppression_warn", "suppression_fail"),
)


def _kind(name: str) -> type:
    """The Python type of a Thresholds field (float unless annotated otherwise)."""
    annotation = str(_FIELDS[name].type)
    for t in (bool, int, str):
        if annotation == t.__name__:
            return t
    return float


def _value(key: str, value: Any, where: str) -> Any:
    """A config value checked against its field: its type, finite, >= 0, <= 1 for shares."""
    kind = _kind(key)
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"threshold {key!r} in {where} must be true or false, got "
                             f"{_shown(value)}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise UsageError(f"threshold {key!r} in {where} must be a string, got {_shown(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"threshold {key!r} in {where} must be a number, got {_shown(value)}")
    if kind is int and not isinstance(value, int):
        raise UsageError(f"threshold {key!r} in {where} must be an integer, got {_shown(value)}")
    number = float(value) if kind is float else value
    if not math.isfinite(number):
        raise UsageError(f"threshold {key!r} in {where} must be a finite number, got {value!r}")
    if number < 0:
        raise UsageError(f"threshold {key!r} in {where} must be 0 or more, got {value!r}")
    if (key in _UNIT or key.endswith("_share")) and number > 1:
        raise UsageError(f"threshold {key!r} in {where} is a share or a mask value, between 0 "
                         f"and 1; got {value!r}")
    return number


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def _apply(base: Thresholds, table: dict[str, Any], where: str) -> Thresholds:
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "blocks":
            continue
        if key not in _NAMES:
            raise UsageError(
                f"unknown threshold {key[:80]!r} in {where}; known: {', '.join(sorted(_NAMES))}"
            )
        values[key] = _value(key, value, where)
    out = dataclasses.replace(base, **values)
    for low, high in _ORDERED:
        if low in _NAMES and high in _NAMES and getattr(out, low) > getattr(out, high):
            raise UsageError(f"thresholds in {where} are inverted: {low} ({getattr(out, low):g}) "
                             f"must not be above {high} ({getattr(out, high):g})")
    return out


def _table(data: dict[str, Any], source: str, explicit: bool) -> Any:
    """The `[tool.coordatt-diag]` table of a parsed file (for `--config`, else the whole file)."""
    tool = data.get("tool")
    if tool is None:
        return data if explicit else None
    if not isinstance(tool, dict):
        if explicit and "tool" not in _NAMES:
            raise UsageError(f"'tool' in {source} must be a table ([tool.coordatt-diag])")
        return None
    if "coordatt-diag" in tool:
        return tool["coordatt-diag"]
    return data if explicit else None


def load_thresholds(config: str | os.PathLike[str] | None = None,
                    cwd: Path | None = None) -> ThresholdConfig:
    """Read the thresholds from `config`, else from `[tool.coordatt-diag]` in ./pyproject.toml.

    Args:
        config: a TOML file named with `--config` (`str` or `Path`).
        cwd: where to look for pyproject.toml (default: the current directory).

    Returns:
        The defaults with the overrides applied.

    Raises:
        UsageError: the file cannot be read or parsed, is not the expected shape (a value where a
            table belongs), a key is unknown, a value is of the wrong type, not finite, negative,
            above 1 for a share, or inverted against its pair, or a pattern is invalid. The
            message names the first bad field.
    """
    if config is None:
        pyproject = (cwd or Path.cwd()) / "pyproject.toml"
        if not pyproject.is_file():
            return ThresholdConfig()
        data = _read_toml(pyproject)
        table = _table(data, str(pyproject), explicit=False)
        if table is None or table == {}:
            return ThresholdConfig()
        source = show_path(pyproject)
    else:
        config = Path(config)
        data = _read_toml(config)
        source = show_path(config)
        table = _table(data, source, explicit=True)
    if not isinstance(table, dict):
        raise UsageError(f"[tool.coordatt-diag] in {source} must be a table, got "
                         f"{_shown(table)}")
    default = _apply(Thresholds(), table, source)
    per_block = []
    blocks = table.get("blocks") or {}
    if not isinstance(blocks, dict):
        raise UsageError(f"'blocks' in {source} must be a table of patterns "
                         f"([tool.coordatt-diag.blocks.\"REGEX\"]), got {_shown(blocks)}")
    for pattern, sub in blocks.items():
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise UsageError(f"invalid block pattern {pattern[:80]!r} in {source}: {exc}") from exc
        if not isinstance(sub, dict):
            raise UsageError(f"blocks.{pattern[:80]!r} in {source} must be a table, got "
                             f"{_shown(sub)}")
        per_block.append((pattern, _apply(default, sub, f"{source} blocks.{pattern[:80]!r}")))
    return ThresholdConfig(default=default, per_block=tuple(per_block), source=str(config or
                                                                                  pyproject))


#: A config file larger than this is not a config file.
MAX_CONFIG_BYTES = 1 << 20


def _read_toml(path: Path) -> dict[str, Any]:
    name = show_path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as exc:
        raise UsageError(f"config file {name} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read config file {name}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from exc
    if not stat.S_ISREG(mode):  # a FIFO would block, a device never end
        raise UsageError(f"config file {name} is not a regular file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read config file {name}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {name} is larger than {MAX_CONFIG_BYTES >> 20} MiB; it is "
                         "not a thresholds file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {name} is not UTF-8 text (byte {exc.start})") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {name} is not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise UsageError(f"config file {name} is nested too deeply") from exc
