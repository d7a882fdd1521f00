"""Two checkpoints (or two report JSONs) side by side: the library behind `coordatt-diag compare`.

Blocks are matched by name. For each block the comparison holds, per mask, the change of its
mean, std and positional std, the change of the block's std ratio, its status before and after,
and the findings that appeared (in B, not in A) and went away (in A, not in B); a finding is the
same when its code, block, mask and severity are (so a warn that became a fail shows as one gone
and one new). Two checkpoints are run on the same inputs, read once; a report JSON is used as it
was written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordatt_diag.results import (
    BlockReport,
    CheckpointInfo,
    Finding,
    InputsInfo,
    PathArg,
    Report,
    Summary,
    display_name,
)

if TYPE_CHECKING:
    from coordatt_diag.runs.inspect import InspectOptions, Progress

COMPARE_SCHEMA_ID = "coordatt-diag/compare@1"
#: Statistics of a mask that are compared.
MASK_STATS = ("mean", "std", "pos_std")


@dataclass(frozen=True)
class Change:
    """One statistic in A and in B.

    Attributes:
        a: the value in A (None when absent there).
        b: the value in B.
        delta: b - a (None unless both are known).
        relative: (b - a) / a (None unless both are known and a != 0).
    """

    a: float | None
    b: float | None
    delta: float | None
    relative: float | None


def change(a: float | None, b: float | None) -> Change:
    """The `Change` from `a` to `b`."""
    if a is None or b is None:
        return Change(a, b, None, None)
    return Change(a, b, b - a, (b - a) / a if a != 0 else None)


@dataclass(frozen=True)
class BlockChange:
    """One block in A and in B.

    Attributes:
        name: the block's name as in `named_modules()`.
        type: its class name (in B, else in A).
        in_a: the block is in A.
        in_b: the block is in B.
        status_a: its status in A (None when absent).
        status_b: its status in B.
        masks: mask kind -> statistic ("mean", "std", "pos_std") -> change.
        std_ratio: change of the block's mean std ratio.
        appeared: findings in B that A did not have.
        resolved: findings in A that B no longer has.
    """

    name: str
    type: str
    in_a: bool
    in_b: bool
    status_a: str | None
    status_b: str | None
    masks: dict[str, dict[str, Change]]
    std_ratio: Change
    appeared: list[Finding] = field(default_factory=list)
    resolved: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    """A against B: `coordatt-diag compare --json`.

    Attributes:
        a: where A came from (its checkpoint facts; for a report JSON, the checkpoint it recorded).
        b: where B came from.
        source_a: the file given for A (checkpoint or report JSON).
        source_b: the file given for B.
        summary_a: A's counts by status.
        summary_b: B's counts by status.
        inputs_a: what A was run on.
        inputs_b: what B was run on.
        blocks: the blocks of A in model order, then those only B has.
        appeared: model-level findings in B that A did not have.
        resolved: model-level findings in A that B no longer has.
        notes: remarks, e.g. that A and B were measured on different inputs.
    """

    a: CheckpointInfo
    b: CheckpointInfo
    source_a: str
    source_b: str
    summary_a: Summary
    summary_b: Summary
    inputs_a: InputsInfo
    inputs_b: InputsInfo
    blocks: list[BlockChange]
    appeared: list[Finding] = field(default_factory=list)
    resolved: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema `coordatt-diag/compare@1`)."""
        return {"schema": COMPARE_SCHEMA_ID, **dataclasses.asdict(self)}


def _key(f: Finding) -> tuple[str, str, str | None, str]:
    return (f.code, f.block, f.mask, f.severity)


def _diff(a: list[Finding], b: list[Finding]) -> tuple[list[Finding], list[Finding]]:
    ka, kb = {_key(f) for f in a}, {_key(f) for f in b}
    return [f for f in b if _key(f) not in ka], [f for f in a if _key(f) not in kb]


def _block_change(name: str, a: BlockReport | None, b: BlockReport | None) -> BlockChange:
    masks: dict[str, dict[str, Change]] = {}
    kinds = list(a.masks if a else {}) + [k for k in (b.masks if b else {})
                                         if not a or k not in a.masks]
    for kind in kinds:
        ma = a.masks.get(kind) if a else None
        mb = b.masks.get(kind) if b else None
        masks[kind] = {s: change(getattr(ma, s) if ma else None, getattr(mb, s) if mb else None)
                       for s in MASK_STATS}
    ratio = change(a.std_ratio.mean if a and a.std_ratio else None,
                   b.std_ratio.mean if b and b.std_ratio else None)
    appeared, resolved = _diff(list(a.findings) if a else [], list(b.findings) if b else [])
    type_ = b.type if b else a.type if a else ""
    return BlockChange(name=name, type=type_, in_a=a is not None, in_b=b is not None,
                       status_a=a.status if a else None, status_b=b.status if b else None,
                       masks=masks, std_ratio=ratio, appeared=appeared, resolved=resolved)


def _inputs_key(i: InputsInfo) -> tuple[Any, ...]:
    return (i.source, i.path, tuple(i.shape), i.samples, i.normalize)


def compare_reports(a: Report, b: Report, source_a: str | None = None,
                    source_b: str | None = None) -> Comparison:
    """Compare two reports block by block.

    Args:
        a: the earlier / reference report.
        b: the report to compare with it.
        source_a: the file A came from (default: its checkpoint path).
        source_b: the file B came from.

    Returns:
        The comparison.
    """
    by_a = {x.name: x for x in a.blocks}
    by_b = {x.name: x for x in b.blocks}
    names = list(by_a) + [n for n in by_b if n not in by_a]
    blocks = [_block_change(n, by_a.get(n), by_b.get(n)) for n in names]
    appeared, resolved = _diff(list(a.findings), list(b.findings))
    notes = []
    if _inputs_key(a.inputs) != _inputs_key(b.inputs):
        notes.append(
            f"A was measured on {a.inputs.samples} samples from {a.inputs.source} "
            f"{a.inputs.path or ''} {a.inputs.shape}, B on {b.inputs.samples} from "
            f"{b.inputs.source} {b.inputs.path or ''} {b.inputs.shape}: statistics depend on the "
            "inputs")
    only_a = [display_name(n) for n in by_a if n not in by_b]
    only_b = [display_name(n) for n in by_b if n not in by_a]
    if only_a:
        notes.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        notes.append(f"only in B: {', '.join(only_b)}")
    return Comparison(
        a=a.checkpoint, b=b.checkpoint,
        source_a=source_a or a.checkpoint.path or "A", source_b=source_b or b.checkpoint.path or "B",
        summary_a=a.summary, summary_b=b.summary, inputs_a=a.inputs, inputs_b=b.inputs,
        blocks=blocks, appeared=appeared, resolved=resolved, notes=notes,
    )


def is_report_file(path: Path) -> bool:
    """Whether `path` names a report JSON rather than a checkpoint (by its `.json` suffix)."""
    return path.suffix.lower() == ".json"


def compare_sources(
    a: PathArg,
    b: PathArg,
    options: InspectOptions | None = None,
    progress: Progress | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
) -> Comparison:
    """What `coordatt-diag compare` runs: read or inspect A and B, then compare them.

    Args:
        a: a checkpoint or a report JSON (`.json`).
        b: likewise.
        options: the inspect options for the checkpoints (both run on the same inputs).
        progress: called with the number of batches done.
        on_checkpoint: called with the index and path before each checkpoint.

    Returns:
        The comparison.

    Raises:
        UsageError, CheckpointError, InputError: as `inspect_checkpoint`; an unreadable report
            JSON is an InputError.
    """
    from coordatt_diag.runs.check import read_report_file

    sources = [Path(a), Path(b)]
    reports: dict[int, Report] = {}
    for i, p in enumerate(sources):
        if is_report_file(p):
            reports[i] = read_report_file(p)
    todo = [i for i in range(2) if i not in reports]
    if todo:
        from coordatt_diag.runs.multirun import inspect_checkpoints

        run = inspect_checkpoints([sources[i] for i in todo], options, progress, on_checkpoint)
        reports.update(zip(todo, run, strict=True))
    return compare_reports(reports[0], reports[1], str(a), str(b))
