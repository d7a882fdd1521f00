"""Mask health across the checkpoints of a training run: the library behind `coordatt-diag trend`.

Every checkpoint is run on the same inputs, read once (`coordatt_diag.runs.multirun`). The checkpoints
are put in the order of the epoch each file records (`CheckpointInfo.epoch`; Ultralytics writes
-1 into the final stripped weights, which counts as no epoch), and those without one after them,
by name in natural order (epoch2.pt before epoch10.pt). For each block the trend holds, per
checkpoint, each mask's std, positional std and mean, the block's std ratio and status: the epoch
where the masks start to flatten is where to look in the training run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordatt_diag.results import Finding, InputsInfo, PathArg, Report
from coordatt_diag.runs.multirun import natural_key

if TYPE_CHECKING:
    from coordatt_diag.runs.inspect import InspectOptions, Progress

TREND_SCHEMA_ID = "coordatt-diag/trend@1"


@dataclass(frozen=True)
class TrendPoint:
    """One checkpoint of the trend.

    Attributes:
        path: the checkpoint file.
        epoch: the epoch the file records (None when it records none, or -1).
        label: "epoch N", or the file name when there is no epoch; "epoch N (file name)" when
            several checkpoints record epoch N (the file's path when their names are alike).
        sha256: hex digest of the file.
        status: the model's status at this checkpoint.
        findings: every finding at this checkpoint (the blocks', then the model-level ones).
    """

    path: str
    epoch: int | None
    label: str
    sha256: str | None
    status: str
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class MaskSeries:
    """One mask's statistics per checkpoint (None where the block or mask is absent).

    Attributes:
        std: unbiased std of the mask values.
        pos_std: positional std (None for channel masks).
        mean: mean mask value.
    """

    std: list[float | None]
    pos_std: list[float | None]
    mean: list[float | None]


@dataclass(frozen=True)
class BlockSeries:
    """One block's statistics per checkpoint.

    Attributes:
        name: the block's name as in `named_modules()`.
        type: its class name (at the first checkpoint that has it).
        masks: mask kind -> its series.
        std_ratio: the block's mean std ratio per checkpoint.
        status: the block's status per checkpoint (None where it is absent).
    """

    name: str
    type: str
    masks: dict[str, MaskSeries]
    std_ratio: list[float | None]
    status: list[str | None]


@dataclass(frozen=True)
class FirstSeen:
    """Where a finding first appeared in the trend.

    Attributes:
        code, block, mask: what identifies the finding.
        severity: its severity at that checkpoint.
        point: the index of that checkpoint in `Trend.points`.
        label: that checkpoint's label.
    """

    code: str
    block: str
    mask: str | None
    severity: str
    point: int
    label: str


@dataclass(frozen=True)
class Trend:
    """Block statistics across checkpoints: `coordatt-diag trend --json`.

    Attributes:
        points: the checkpoints, in order.
        blocks: the blocks, in model order (blocks that appear later are appended).
        inputs: the inputs every checkpoint was run on.
        thresholds: the thresholds the findings were judged with (of the first checkpoint).
        first_seen: each finding (code, block, mask) at the checkpoint where it first appeared,
            in order.
    """

    points: list[TrendPoint]
    blocks: list[BlockSeries]
    inputs: InputsInfo
    thresholds: dict[str, Any] = field(default_factory=dict)
    first_seen: list[FirstSeen] = field(default_factory=list)

    @property
    def by_epoch(self) -> bool:
        """Every checkpoint records its own epoch, no two the same (the x axis is the epoch);
        otherwise the plots are over the checkpoints in order (`last.pt` and `best.pt` of one
        run often record the same epoch)."""
        epochs = [p.epoch for p in self.points]
        return bool(epochs) and None not in epochs and len(set(epochs)) == len(epochs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema `coordatt-diag/trend@1`)."""
        data = dataclasses.asdict(self)
        return {"schema": TREND_SCHEMA_ID, **data}


def _epoch(report: Report) -> int | None:
    epoch = report.checkpoint.epoch
    return epoch if epoch is not None and epoch >= 0 else None


def order_reports(reports: list[Report]) -> list[Report]:
    """The reports by the epoch their file records, then those without one by name (natural)."""
    def key(r: Report) -> tuple[int, int, list[tuple[int, int | str]]]:
        epoch = _epoch(r)
        name = natural_key(r.checkpoint.path or "")
        return (0, epoch, name) if epoch is not None else (1, 0, name)

    return sorted(reports, key=key)


def _name(report: Report, path: str) -> str:
    """A watch's label for its probe (history lines), else the checkpoint's file name."""
    watch = report.checkpoint.extra.get("watch")
    if isinstance(watch, dict) and watch.get("label"):
        return str(watch["label"])
    return Path(path).name


def _labels(reports: list[Report]) -> list[str]:
    """"epoch N", or the name without an epoch (a watch's probe label, else the file name); a
    repeated epoch gets the name too (the path when the names repeat), so that every checkpoint
    reads apart."""
    paths = [r.checkpoint.path or "model" for r in reports]
    epochs = [_epoch(r) for r in reports]
    names = [_name(r, p) for r, p in zip(reports, paths, strict=True)]
    out = []
    for path, name, epoch in zip(paths, names, epochs, strict=True):
        if epoch is None:
            out.append(name if names.count(name) == 1 else path)
        elif epochs.count(epoch) == 1:
            out.append(f"epoch {epoch}")
        else:
            same = [n for n, e in zip(names, epochs, strict=True) if e == epoch]
            out.append(f"epoch {epoch} ({name if same.count(name) == 1 else path})")
    return out


def build_trend(reports: list[Report], order: bool = True) -> Trend:
    """The trend of `reports` (ordered with `order_reports` unless `order` is False).

    Args:
        reports: one report per checkpoint, e.g. from `multirun.inspect_checkpoints`.
        order: sort them by epoch / name first.

    Returns:
        The per-block series.
    """
    if not reports:
        raise ValueError("a trend needs at least one report")
    ordered = order_reports(reports) if order else list(reports)
    n = len(ordered)
    points = []
    names: list[str] = []
    types: dict[str, str] = {}
    first_seen: dict[tuple[str, str, str | None], FirstSeen] = {}
    labels = _labels(ordered)
    for i, (r, label) in enumerate(zip(ordered, labels, strict=True)):
        epoch = _epoch(r)
        path = r.checkpoint.path or "model"
        findings = [f for b in r.blocks for f in b.findings] + list(r.findings)
        points.append(TrendPoint(path=path, epoch=epoch, label=label, sha256=r.checkpoint.sha256,
                                 status=r.summary.status, findings=findings))
        for f in findings:
            first_seen.setdefault((f.code, f.block, f.mask), FirstSeen(
                code=f.code, block=f.block, mask=f.mask, severity=f.severity, point=i, label=label))
        for b in r.blocks:
            if b.name not in types:
                names.append(b.name)
                types[b.name] = b.type
    blocks = []
    for name in names:
        masks: dict[str, MaskSeries] = {}
        ratio: list[float | None] = [None] * n
        status: list[str | None] = [None] * n
        for i, r in enumerate(ordered):
            found = next((x for x in r.blocks if x.name == name), None)
            if found is None:
                continue
            status[i] = found.status
            ratio[i] = found.std_ratio.mean if found.std_ratio is not None else None
            for kind, m in found.masks.items():
                s = masks.setdefault(kind, MaskSeries([None] * n, [None] * n, [None] * n))
                s.std[i], s.pos_std[i], s.mean[i] = m.std, m.pos_std, m.mean
        blocks.append(BlockSeries(name=name, type=types[name], masks=masks, std_ratio=ratio,
                                  status=status))
    return Trend(points=points, blocks=blocks, inputs=ordered[0].inputs,
                 thresholds=dict(ordered[0].thresholds), first_seen=list(first_seen.values()))


HISTORY_SUFFIX = ".jsonl"


def read_history(path: Path) -> list[Report]:
    """The reports of a watch's JSON-lines history (`coordatt_diag.watch.MaskWatch`), in the
    order they were written; each report's `checkpoint.path` becomes `FILE:LINE`.

    A last line cut short (the training was killed while writing it) is skipped.

    Raises:
        InputError: the file is missing, or a line is not a coordatt-diag report.
    """
    import json

    from coordatt_diag.errors import InputError

    if not path.is_file():
        raise InputError(f"{path} does not exist")
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    reports: list[Report] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            report = Report.from_dict(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: a partial last line
                continue
            raise InputError(f"{path}:{number} is not JSON ({exc.msg}); a watch history holds "
                             "one report per line") from exc
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(f"{path}:{number} is not a coordatt-diag report ({first})") from exc
        checkpoint = dataclasses.replace(report.checkpoint, path=f"{path}:{number}")
        reports.append(dataclasses.replace(report, checkpoint=checkpoint))
    if not reports:
        raise InputError(f"{path} holds no report yet (the watch writes one per probe)")
    return reports


def trend_history(path: Path) -> Trend:
    """The trend of a watch's history, in the order the probes ran."""
    return build_trend(read_history(path), order=False)


def trend_checkpoints(
    paths: Sequence[PathArg],
    options: InspectOptions | None = None,
    progress: Progress | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
) -> Trend:
    """What `coordatt-diag trend` runs: every checkpoint on the same inputs (read once), then the
    trend in epoch order.

    Args:
        paths: checkpoint files; glob patterns the shell did not expand are expanded here.
        options: the inspect options (inputs, model factory, thresholds, ...).
        progress: called with the number of batches done over all checkpoints.
        on_checkpoint: called with the index and path before each checkpoint.

    Returns:
        The trend.

    Raises:
        UsageError, CheckpointError, InputError: as `inspect_checkpoint`.
    """
    from coordatt_diag.runs.multirun import expand_paths, inspect_checkpoints

    if any(Path(p).suffix == HISTORY_SUFFIX for p in paths):
        return _history_trend([Path(p) for p in paths], options)
    files = expand_paths(paths)
    return build_trend(inspect_checkpoints(files, options, progress, on_checkpoint))


def _history_trend(paths: list[Path], options: InspectOptions | None) -> Trend:
    from coordatt_diag.errors import UsageError
    from coordatt_diag.runs.inspect import InspectOptions

    if len(paths) != 1:
        raise UsageError("trend reads one watch history (.jsonl) at a time, without checkpoints")
    if options is not None and options != InspectOptions():
        raise UsageError("a watch history holds its statistics: the model, input and threshold "
                         "options do not apply to it")
    return trend_history(Path(paths[0]))
