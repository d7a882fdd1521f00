"""The result of a run as frozen, documented data.

Hooks reduce each batch to small summaries (`coordatt_diag.stats.masks`), `coordatt_diag.runs.inspect`
freezes them into a `Report`, `coordatt_diag.health.rules` adds findings, and the writers in
`coordatt_diag.reports` render it without computing anything. The JSON report is the plain
serialisation of these classes (`Report.to_dict` / `Report.from_dict`); its JSON Schema is
`coordatt_diag/schema/report.schema.json`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, TypeAlias

#: A file or folder argument of the Python API: a `str` or a `pathlib.Path` (any os.PathLike).
PathArg: TypeAlias = "str | os.PathLike[str]"

SCHEMA_ID = "coordatt-diag/report@1"

#: Mask kinds, by the shape the block computed them in (B = batch, C = channels of the block input).
MASK_KINDS = ("a_h", "a_w", "a_hw", "channel", "spatial")

SEVERITIES = ("info", "warn", "fail")
STATUSES = ("ok", "warn", "fail")


@dataclass(frozen=True)
class AxisProfile:
    """Mean mask value at each position along one axis, and its channel-to-channel spread.

    Attributes:
        mean: for each position, the mask averaged over samples, channels and the other axis.
        spread: for each position, the (population) std across channels of the per-channel means.
    """

    mean: list[float]
    spread: list[float]


@dataclass(frozen=True)
class MaskStats:
    """Statistics of one mask of one block over every value of every batch.

    Attributes:
        count: number of finite values seen.
        min, max, mean: over the finite values.
        std: unbiased std over all finite values (for one batch, the seed's `last_mask_stats()`).
        sat_low: share of values <= 0.01 (the gate is shutting the signal off).
        sat_high: share of values >= 0.99 (the gate passes everything).
        exact01: share of values exactly 0 or exactly 1 (a hard gate in its flat region: no gradient).
        nonfinite: number of NaN or infinite values.
        pos_std: population std along the mask's own positional axes (H for a_h, W for a_w, H*W for
            a_hw and spatial) for each sample and channel, averaged; None for channel masks.
        chan_std: population std across channels of the per-channel mean; None with one channel.
        hist: 64-bin histogram of the finite values over [0, 1].
        shape: one sample's mask in canonical layout: [C, H, 1] for a_h, [C, 1, W] for a_w,
            [C, H, W] for a_hw, [C, 1, 1] for channel, [1, H, W] for spatial.
        profile_h: axis profile along H (None when H == 1 or the shape varied between batches).
        profile_w: axis profile along W (likewise).
        sample_std: for each channel, the population std over samples of the channel's mean over
            positions, averaged over channels: how much the mask follows the input (0: the same
            mask whatever the input); None when the shape varied between batches.
    """

    count: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    sat_low: float
    sat_high: float
    exact01: float
    nonfinite: int
    pos_std: float | None
    chan_std: float | None
    hist: list[int]
    shape: list[int]
    profile_h: AxisProfile | None = None
    profile_w: AxisProfile | None = None
    sample_std: float | None = None


@dataclass(frozen=True)
class StdRatio:
    """std(out) / std(x) of a block: per batch mean_i std(out_i) / mean_i std(x_i) (population std
    over C*H*W of each sample, the seed's `r_out_pre`).

    Attributes:
        mean: sample-weighted mean over batches.
        min: smallest per-batch value.
        batches: number of batches it was measured on.
    """

    mean: float
    min: float
    batches: int


@dataclass(frozen=True)
class Finding:
    """One health finding.

    Attributes:
        code: stable identifier (see the thresholds table in the README).
        severity: "info", "warn" or "fail".
        block: the block's name as in `named_modules()` ("" for the model as a whole).
        mask: the mask it is about (a_h, a_w, ...), or None for the whole block.
        value: the measured value.
        threshold: the threshold it was compared with.
        message: one line: what was measured and why it matters.
        remedy: what to change, in plain words.
        doc: where the finding and its remedies are explained (`docs/remedies.md#<code>`), or
            None.
    """

    code: str
    severity: str
    block: str
    mask: str | None
    value: float | None
    threshold: float | None
    message: str
    remedy: str
    doc: str | None = None


@dataclass(frozen=True)
class Ablation:
    """What replacing a block's masks did to the model output (`coordatt_diag.runs.effect`).

    Attributes:
        rel_l2: relative L2 change of the output, sqrt(sum ||out' - out||^2 / sum ||out||^2)
            over all samples.
        top1_agreement: share of samples whose top-1 class is unchanged (2-D outputs), else None.
        accuracy_drop: accuracy without the replacement minus accuracy with it (labels given),
            else None.
    """

    rel_l2: float
    top1_agreement: float | None
    accuracy_drop: float | None


@dataclass(frozen=True)
class MaskEffect:
    """A block's mask effect (`inspect --effect`).

    Attributes:
        positional: each mask replaced by its mean over positions for each sample and channel;
            None when the block has no positional mask (SE).
        constant: each mask replaced by its overall mean over the batch (a constant scale).
        accuracy: the model's accuracy on the labelled inputs without replacement, else None.
        samples: number of samples it was measured on.
    """

    positional: Ablation | None
    constant: Ablation
    accuracy: float | None
    samples: int


@dataclass(frozen=True)
class WeightInit:
    """Whether a block's weight tensors (parameters with dim > 1) still look initialised.

    A tensor is "at init" when it fits the distribution it was drawn from: the block's own init
    where the package knows it (a normal std the block declares, zeros), else PyTorch's default
    for convolutions and linear layers, uniform in +-1/sqrt(fan_in): every value inside the bound
    and the std within `tolerance` of the distribution's.

    Attributes:
        tensors: weight tensors checked.
        at_init: how many of them are at init.
        values: number of weight values checked (few values cannot tell a trained tensor from
            an initialised one: ECA's 3-tap conv stays inside its init range when trained).
        std_ratio: for each tensor, its std over the std of its init distribution, median over
            tensors.
        max_bound_ratio: largest max|w| / bound over the tensors checked against a uniform init
            (> 1: some value left the init range), None when none was.
        init: the init each tensor was compared with, e.g. "uniform(1/sqrt(fan_in))",
            "normal(0.01)", "zeros" (joined with "+" when they differ).
    """

    tensors: int
    at_init: int
    values: int
    std_ratio: float | None
    max_bound_ratio: float | None
    init: str


@dataclass(frozen=True)
class BlockReport:
    """One attention block.

    Attributes:
        name: module name as in `model.named_modules()` ("" is the model itself).
        type: the block's class name.
        kind: "coordinate", "coordinate+channel", "coordinate-map", "cbam", "channel", "spatial",
            "select" (weights across branches) or "other", from the masks it computes.
        feature: [C, H, W] of the block's input (first batch).
        masks: mask kind -> statistics, in the order the block computed them.
        std_ratio: the block's std ratio, None when its input or output is not a tensor.
        params: number of parameters of the block.
        identity_path: the block keeps part of its input unscaled (attention residual, alpha
            blending, `x + alpha * (y - x)`), so the seed's std-ratio floor applies.
        weight_rms: root mean square of the block's weight tensors (parameters with dim > 1).
        status: "ok", "warn" or "fail": the most severe of its findings.
        findings: the block's findings.
        extra: family-specific statistics (e.g. a seed block's monitor, router and clamps);
            `forced: true` for a block named by `--blocks` that the search did not select;
            `parts`: mask -> the child of the block it comes from (a residual block's `ca`).
        effect: how much the output changes when the masks are replaced (`--effect`), else None.
        weight_init: whether the block's weights still look initialised (the evidence of the
            `untrained` finding), None when the block has no weight tensor.
        scale_floor: the smallest scale of its input the block can output (its own blend, e.g.
            1 - alpha * beta for an alpha blend over an attention residual), None when the
            package does not know the block's blend.
    """

    name: str
    type: str
    kind: str
    feature: list[int]
    masks: dict[str, MaskStats]
    std_ratio: StdRatio | None
    params: int
    identity_path: bool
    weight_rms: float | None
    status: str = "ok"
    findings: list[Finding] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    effect: MaskEffect | None = None
    weight_init: WeightInit | None = None
    scale_floor: float | None = None


@dataclass(frozen=True)
class CheckpointInfo:
    """Where the model came from.

    Attributes:
        path: the checkpoint file, None for an in-memory model.
        sha256: hex digest of the file.
        format: "module", "dict:ema", "dict:model", "state_dict", "ultralytics", "lightning",
            "safetensors" or "in-memory".
        epoch: the epoch the file records, if it does.
        extra: other facts the file records (e.g. Ultralytics `train_args`, `date`, `version`;
            Lightning `global_step`, `hyper_parameters`; safetensors `metadata`), plus
            `model_key` ("model" or "ema": the entry of an Ultralytics file that held the model)
            and `stride` (a YOLO model's largest stride).
    """

    path: str | None
    sha256: str | None
    format: str
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch_label(self) -> str | None:
        """The epoch as the renderers show it: "epoch 12"; a negative epoch (Ultralytics writes
        -1 into the final `last.pt`/`best.pt` it strips) is "final weights"; None if unknown."""
        if self.epoch is None:
            return None
        return "final weights" if self.epoch < 0 else f"epoch {self.epoch}"


@dataclass(frozen=True)
class InputsInfo:
    """What was fed to the model.

    Attributes:
        source: "synthetic", "images" or "tensors".
        path: the file or folder, None for synthetic inputs.
        samples: number of samples run.
        batches: number of batches run.
        batch_size: the batch size asked for.
        shape: [C, H, W] of one sample (first batch).
        skipped: images that could not be read.
        normalize: "unit", "imagenet" or None (tensors are used as given).
        note: a remark for the user (e.g. that real images give a truer picture), or None.
    """

    source: str
    path: str | None
    samples: int
    batches: int
    batch_size: int
    shape: list[int]
    skipped: int = 0
    normalize: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Summary:
    """Counts of blocks by status, and the model's status (the worst block's)."""

    blocks: int
    ok: int
    warn: int
    fail: int
    status: str


@dataclass(frozen=True)
class Report:
    """A whole run: the JSON report of `coordatt-diag inspect --json`.

    Attributes:
        schema: "coordatt-diag/report@1".
        tool: {"name", "version", "torch", "device", "dtype", "processes"}.
        checkpoint: where the model came from.
        inputs: what was fed to it.
        blocks: the attention blocks in model order.
        summary: counts by status.
        findings: model-level findings (block == ""), e.g. from a baseline comparison.
        thresholds: the thresholds the findings were judged with.
    """

    schema: str
    tool: dict[str, Any]
    checkpoint: CheckpointInfo
    inputs: InputsInfo
    blocks: list[BlockReport]
    summary: Summary
    findings: list[Finding] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (plain `dataclasses.asdict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild a report from `to_dict()` output (e.g. a JSON file written by `inspect`)."""
        if data.get("schema") != SCHEMA_ID:
            raise ValueError(f"not a coordatt-diag report (schema {data.get('schema')!r})")
        return cls(
            schema=data["schema"],
            tool=dict(data["tool"]),
            checkpoint=CheckpointInfo(**data["checkpoint"]),
            inputs=InputsInfo(**data["inputs"]),
            blocks=[_block_from_dict(b) for b in data["blocks"]],
            summary=Summary(**data["summary"]),
            findings=[Finding(**f) for f in data.get("findings", [])],
            thresholds=dict(data.get("thresholds", {})),
        )

    def block(self, name: str) -> BlockReport:
        """The block called `name` (KeyError if there is none)."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)


def _profile(data: dict[str, Any] | None) -> AxisProfile | None:
    return None if data is None else AxisProfile(**data)


def _mask_from_dict(data: dict[str, Any]) -> MaskStats:
    d = dict(data)
    d["profile_h"] = _profile(d.get("profile_h"))
    d["profile_w"] = _profile(d.get("profile_w"))
    return MaskStats(**d)


def _ablation(data: dict[str, Any] | None) -> Ablation | None:
    return None if data is None else Ablation(**data)


def _effect_from_dict(data: dict[str, Any] | None) -> MaskEffect | None:
    if data is None:
        return None
    d = dict(data)
    d["positional"] = _ablation(d.get("positional"))
    d["constant"] = _ablation(d["constant"])
    return MaskEffect(**d)


def _block_from_dict(data: dict[str, Any]) -> BlockReport:
    d = dict(data)
    d["masks"] = {k: _mask_from_dict(v) for k, v in d["masks"].items()}
    d["std_ratio"] = None if d.get("std_ratio") is None else StdRatio(**d["std_ratio"])
    d["findings"] = [Finding(**f) for f in d.get("findings", [])]
    d["effect"] = _effect_from_dict(d.get("effect"))
    d["weight_init"] = None if d.get("weight_init") is None else WeightInit(**d["weight_init"])
    return BlockReport(**d)


def display_name(name: str) -> str:
    """How a block name is shown: the model itself ("") reads as "(model)"."""
    return name if name else "(model)"
