"""The CI health gate behind `coordatt-diag check`: a verdict per checkpoint, and the comparison
with a baseline report.

A checkpoint fails the gate when any of its findings is at or above `fail_on` ("info" < "warn" <
"fail"), each counted at its gate level: its severity, raised for the codes in `levels`
(`GATE_LEVELS`: a near-constant mask fails by default; see docs/check.md). With a baseline (an
earlier report of the same architecture, e.g. the one `check --write-baseline` wrote on the main
branch), blocks are matched by name and each one's statistics
are compared with the baseline's; what changed for the worse becomes findings that count for the
gate like any other:

* `baseline_regression` (fail): a mask's std or positional std fell by more than `max_drop`
  (relative to the baseline value), or the block's std ratio by more than `max_ratio_drop`;
* `baseline_missing_block` (fail): a block of the baseline is not in the model (renamed,
  removed, no longer found);
* `baseline_new_block` (warn): a block of the model is not in the baseline (nothing to compare
  it with);
* `baseline_changed_block` (warn): a matched block computes other masks than in the baseline;
* `baseline_inputs_differ` (info): the baseline was measured on other inputs (source, path,
  sample shape or normalisation).

A relative fall is judged only while the baseline value is at least the absolute floor the health
rules use (`near_constant_fail` for a mask's std, `position_blind_pos_std` for its positional
std): below it the block was already flagged in the baseline, and a relative change of a value
that small is noise. The baseline answers the seed's caveat (NOTES.md, seed 000 section 9) that an
absolute std threshold cannot tell an untrained block from a collapsed one: a block that fell from
its own healthy level is a regression whatever the absolute value.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordatt_diag.errors import InputError, UsageError, one_line, opt, show_path
from coordatt_diag.health.rules import summarize, worst
from coordatt_diag.health.thresholds import ThresholdConfig
from coordatt_diag.results import SEVERITIES, BlockReport, Finding, PathArg, Report, display_name

if TYPE_CHECKING:
    from coordatt_diag.runs.inspect import InspectOptions, Progress

CHECK_SCHEMA_ID = "coordatt-diag/check@1"

#: Default `fail_on`: only "fail" findings fail the gate (warnings are reported, not fatal).
FAIL_ON = "fail"
#: Findings the gate counts at a higher level than the report gives them (code -> level), unless
#: `--level CODE=LEVEL` says otherwise. A near-constant mask fails the gate by default: in the
#: validation study (docs/validation.md, docs/check.md) `near_constant` fired on every collapsed
#: model and on no healthy one, and no block's std lay between the seed's 0.02 and the warning
#: threshold 0.03.
GATE_LEVELS: dict[str, str] = {"near_constant": "fail"}
#: Default `max_drop`: a mask std or positional std that lost more than half of its baseline value.
MAX_DROP = 0.5
#: Default `max_ratio_drop`: a std ratio that lost more than 30% of its baseline value.
MAX_RATIO_DROP = 0.3

BASELINE_CODES = ("baseline_regression", "baseline_missing_block", "baseline_new_block",
                  "baseline_changed_block", "baseline_inputs_differ")

_RANK = {"info": 0, "warn": 1, "fail": 2}


def at_or_above(severity: str, fail_on: str) -> bool:
    """Whether a finding of `severity` fails a gate set at `fail_on`."""
    return _RANK[severity] >= _RANK[fail_on]


def gate_severity(f: Finding, levels: Mapping[str, str]) -> str:
    """The severity the gate counts a finding at: its own, raised to `levels[f.code]` if higher
    (a level never lowers a finding)."""
    level = levels.get(f.code)
    if level is None or _RANK[level] <= _RANK[f.severity]:
        return f.severity
    return level


def gate_levels(pairs: Iterable[str] = (), defaults: Mapping[str, str] | None = None,
                ) -> dict[str, str]:
    """The gate levels: `defaults` (`GATE_LEVELS`) updated with `CODE=LEVEL` pairs
    (`--level near_constant=warn` counts near-constant masks as the report does).

    Raises:
        UsageError: a pair that is not CODE=LEVEL with LEVEL one of info, warn, fail.
    """
    levels = dict(GATE_LEVELS if defaults is None else defaults)
    for pair in pairs:
        code, sep, level = pair.partition("=")
        code, level = code.strip(), level.strip().lower()
        if not sep or not code or level not in SEVERITIES:
            raise UsageError(f"{opt('level', pair)}: write CODE=LEVEL with LEVEL one of "
                             f"{', '.join(SEVERITIES)}, e.g. {opt('level', 'near_constant=warn')}")
        levels[code] = level
    return levels


def check_fail_on(fail_on: str) -> str:
    """Validate a `--fail-on` level (raises UsageError)."""
    if fail_on not in SEVERITIES:
        raise UsageError(f"{opt('fail_on')} must be one of {', '.join(SEVERITIES)}, not {fail_on!r}")
    return fail_on


@dataclass(frozen=True)
class BaselineOptions:
    """How a report is compared with its baseline.

    Attributes:
        max_drop: a mask's std or positional std that fell by more than this share of its baseline
            value (0.5: to less than half) is a regression.
        max_ratio_drop: likewise for the block's std ratio (0.3: to less than 70%).
    """

    max_drop: float = MAX_DROP
    max_ratio_drop: float = MAX_RATIO_DROP

    def __post_init__(self) -> None:
        for name in ("max_drop", "max_ratio_drop"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"{opt(name)} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Verdict:
    """The gate's judgement of one checkpoint.

    Attributes:
        report: the checkpoint's report with the baseline findings added (`add_findings`: a
            block's to the block, whose status follows; the model's and those of blocks only the
            baseline has to the model-level `findings`).
        failing: the findings at or above `fail_on`: the blocks' in model order, then those of
            blocks only the baseline has, then the model-level ones.
        fail_on: the gate level.
        baseline: the baseline report file, if one was given.
        seconds: wall time of the checkpoint's run.
        levels: the gate levels it was judged with (`GATE_LEVELS`, `--level`).
        started: when the run started (local time, ISO 8601, seconds).
    """

    report: Report
    failing: list[Finding]
    fail_on: str
    baseline: str | None = None
    seconds: float = 0.0
    started: str = ""
    levels: dict[str, str] = field(default_factory=lambda: dict(GATE_LEVELS))

    @property
    def healthy(self) -> bool:
        """No finding at or above `fail_on`."""
        return not self.failing

    def findings(self) -> list[Finding]:
        """Every finding: each block's, then the model-level ones."""
        return [f for b in self.report.blocks for f in b.findings] + list(self.report.findings)

    def failing_blocks(self) -> dict[str, list[Finding]]:
        """Block name ("" for the model) -> its failing findings, in report order."""
        out: dict[str, list[Finding]] = {}
        for f in self.failing:
            out.setdefault(f.block, []).append(f)
        return out


@dataclass(frozen=True)
class CheckResult:
    """What `check` decided, over every checkpoint it was given.

    Attributes:
        verdicts: one per checkpoint, in the order given.
        fail_on: the gate level.
        baseline: the baseline report file, if one was given.
        options: the baseline tolerances.
        levels: the gate levels (`GATE_LEVELS` updated by `--level`).
    """

    verdicts: list[Verdict]
    fail_on: str
    baseline: str | None = None
    options: BaselineOptions = field(default_factory=BaselineOptions)
    levels: dict[str, str] = field(default_factory=lambda: dict(GATE_LEVELS))

    @property
    def healthy(self) -> bool:
        """Every checkpoint passed the gate."""
        return all(v.healthy for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `check --json` (schema `coordatt-diag/check@1`)."""
        return {
            "schema": CHECK_SCHEMA_ID,
            "healthy": self.healthy,
            "fail_on": self.fail_on,
            "levels": dict(self.levels),
            "baseline": self.baseline,
            "max_drop": self.options.max_drop,
            "max_ratio_drop": self.options.max_ratio_drop,
            "checkpoints": [
                {
                    "path": v.report.checkpoint.path,
                    "healthy": v.healthy,
                    "status": v.report.summary.status,
                    "failing": [dataclasses.asdict(f) for f in v.failing],
                    "seconds": v.seconds,
                    "report": v.report.to_dict(),
                }
                for v in self.verdicts
            ],
        }


# ---------------------------------------------------------------------------------------------
# Baseline comparison


def read_report_file(path: PathArg, what: str = "report") -> Report:
    """Read a report JSON written by `inspect --json` or `check --write-baseline` (or the report of
    a one-checkpoint `check --json`), validated against the report schema first.

    Raises:
        InputError: the file is missing, not a regular file, not JSON, nested too deeply, or not
            a coordatt-diag report (the message names the first bad field).
    """
    from coordatt_diag.load.report_file import check_report_data, read_json_file

    path = Path(path)
    data = read_json_file(path, what)
    if isinstance(data, dict) and data.get("schema") == CHECK_SCHEMA_ID:
        checkpoints = data.get("checkpoints")
        if not isinstance(checkpoints, list) or len(checkpoints) != 1:
            n = len(checkpoints) if isinstance(checkpoints, list) else 0
            raise InputError(
                f"{what} {show_path(path)} is a check result for {n} checkpoints; write a "
                "baseline for one with `coordatt-diag check --write-baseline`"
            )
        data = checkpoints[0].get("report") if isinstance(checkpoints[0], dict) else None
    check_report_data(data, path, what)
    try:
        return Report.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(
            f"{what} {show_path(path)} is not a coordatt-diag report ({one_line(str(exc), 200)}); "
            "write one with `coordatt-diag inspect --json` or `coordatt-diag check --write-baseline`"
        ) from exc


def add_findings(report: Report, findings: list[Finding]) -> Report:
    """The report with `findings` added: those naming one of its blocks to that block (whose
    status follows), the others (the model's, blocks only a baseline has) to the model-level
    findings; the summary recounted."""
    by_block: dict[str, list[Finding]] = {}
    model: list[Finding] = []
    names = {b.name for b in report.blocks}
    for f in findings:
        if f.block in names:
            by_block.setdefault(f.block, []).append(f)
        else:
            model.append(f)
    blocks = []
    for b in report.blocks:
        if b.name in by_block:
            fs = list(b.findings) + by_block[b.name]
            b = dataclasses.replace(b, findings=fs, status=worst(fs))
        blocks.append(b)
    all_model = list(report.findings) + model
    return dataclasses.replace(report, blocks=blocks, findings=all_model,
                               summary=summarize(blocks, all_model))


def baseline_report(report: Report) -> Report:
    """The report as a baseline: without the findings of an earlier baseline comparison."""
    blocks = []
    for b in report.blocks:
        fs = [f for f in b.findings if f.code not in BASELINE_CODES]
        blocks.append(dataclasses.replace(b, findings=fs, status=worst(fs)))
    kept = [f for f in report.findings if f.code not in BASELINE_CODES]
    return dataclasses.replace(report, blocks=blocks, findings=kept,
                               summary=summarize(blocks, kept))


def _drop(base: float | None, now: float | None, floor: float) -> float | None:
    """Relative fall from `base` to `now`, when `base` is judged (>= floor and > 0)."""
    if base is None or now is None or base <= 0 or base < floor:
        return None
    return (base - now) / base


def _finding(code: str, severity: str, block: str, mask: str | None, value: float | None,
             threshold: float | None, message: str, remedy: str) -> Finding:
    return Finding(code=code, severity=severity, block=block, mask=mask, value=value,
                   threshold=threshold, message=message, remedy=remedy)


_REGRESSION_REMEDY = (
    "compare the training runs (weight decay on the attention heads, learning rate, the epoch "
    "the masks started to flatten: coordatt-diag trend); if the change is intended, write a new "
    "baseline with check --write-baseline"
)


def _block_regressions(now: BlockReport, base: BlockReport, opts: BaselineOptions,
                       floors: tuple[float, float]) -> list[Finding]:
    out: list[Finding] = []
    for mask, m in now.masks.items():
        b = base.masks.get(mask)
        if b is None:
            continue
        for stat, label, floor in (("std", "std", floors[0]), ("pos_std", "positional std",
                                                                floors[1])):
            before, after = getattr(b, stat), getattr(m, stat)
            drop = _drop(before, after, floor)
            if drop is None or drop <= opts.max_drop:
                continue
            out.append(_finding(
                "baseline_regression", "fail", now.name, mask, drop, opts.max_drop,
                f"{mask} {label} fell {drop:.0%} from the baseline's {before:.4g} to "
                f"{after:.4g} (more than --max-drop {opts.max_drop:.0%})",
                _REGRESSION_REMEDY,
            ))
    if now.std_ratio is not None and base.std_ratio is not None:
        before, after = base.std_ratio.mean, now.std_ratio.mean
        drop = _drop(before, after, 0.0)
        if drop is not None and drop > opts.max_ratio_drop:
            out.append(_finding(
                "baseline_regression", "fail", now.name, None, drop, opts.max_ratio_drop,
                f"std ratio fell {drop:.0%} from the baseline's {before:.3f} to "
                f"{after:.3f} (more than --max-ratio-drop {opts.max_ratio_drop:.0%}): the block "
                "suppresses more of its input",
                _REGRESSION_REMEDY,
            ))
    if set(now.masks) != set(base.masks):
        out.append(_finding(
            "baseline_changed_block", "warn", now.name, None, None, None,
            f"the block computes masks {', '.join(now.masks) or 'none'}; the baseline's computed "
            f"{', '.join(base.masks) or 'none'}: only the common ones are compared",
            "if the block was changed on purpose, write a new baseline with "
            "check --write-baseline",
        ))
    return out


def _inputs_key(report: Report) -> tuple[Any, ...]:
    i = report.inputs
    return (i.source, i.path, tuple(i.shape), i.normalize)


def compare_to_baseline(
    report: Report,
    baseline: Report,
    options: BaselineOptions | None = None,
    thresholds: ThresholdConfig | None = None,
) -> list[Finding]:
    """The findings of comparing `report` with `baseline` (see the module doc for the codes).

    Args:
        report: the report under test.
        baseline: an earlier report of the same architecture.
        options: the tolerances.
        thresholds: the thresholds whose absolute floors apply (default: the documented table).

    Returns:
        The baseline findings, in the report's block order, then missing blocks.

    Raises:
        UsageError: the two reports share no block (not the same architecture).
    """
    opts = options or BaselineOptions()
    config = thresholds or ThresholdConfig()
    base_blocks = {b.name: b for b in baseline.blocks}
    now_names = {b.name for b in report.blocks}
    if report.blocks and baseline.blocks and not now_names & set(base_blocks):
        raise UsageError(
            "the baseline shares no block with the model (baseline: "
            f"{', '.join(display_name(n) for n in list(base_blocks)[:4])}; model: "
            f"{', '.join(display_name(b.name) for b in report.blocks[:4])}): is it a report of the "
            "same architecture?"
        )
    out: list[Finding] = []
    if _inputs_key(report) != _inputs_key(baseline):
        bi, ni = baseline.inputs, report.inputs
        out.append(_finding(
            "baseline_inputs_differ", "info", "", None, None, None,
            f"the baseline was measured on {bi.source} {bi.path or ''} {bi.shape}, this run on "
            f"{ni.source} {ni.path or ''} {ni.shape}: statistics depend on the inputs",
            "run check with the inputs the baseline was written with",
        ))
    for block in report.blocks:
        base = base_blocks.get(block.name)
        if base is None:
            out.append(_finding(
                "baseline_new_block", "warn", block.name, None, None, None,
                f"the block ({block.type}) is not in the baseline: it is judged by the absolute "
                "thresholds only",
                "write a new baseline with check --write-baseline once the block is healthy",
            ))
            continue
        th = config.for_block(block.name)
        out.extend(_block_regressions(block, base, opts,
                                      (th.near_constant_fail, th.position_blind_pos_std)))
    for name, base in base_blocks.items():
        if name not in now_names:
            out.append(_finding(
                "baseline_missing_block", "fail", name, None, None, None,
                f"the block ({base.type}) is in the baseline but was not found in the model",
                "if the block was renamed or removed on purpose, write a new baseline with "
                "check --write-baseline; else check --blocks and the model factory",
            ))
    return out


# ---------------------------------------------------------------------------------------------
# Verdicts


def judge_report(
    report: Report,
    fail_on: str = FAIL_ON,
    baseline: Report | None = None,
    options: BaselineOptions | None = None,
    thresholds: ThresholdConfig | None = None,
    levels: Mapping[str, str] | None = None,
) -> Verdict:
    """The gate's verdict on one report.

    Args:
        report: a report from `inspect_checkpoint` / `analyze_model` (or read back from JSON).
        fail_on: "info", "warn" or "fail": the least severe finding that fails the gate.
        baseline: an earlier report to compare with (`compare_to_baseline`).
        options: the baseline tolerances.
        thresholds: the thresholds whose floors the baseline comparison uses.
        levels: finding code -> the level the gate counts it at, when higher than its severity
            (default `GATE_LEVELS`).

    Returns:
        The verdict, with the baseline findings added to the report.
    """
    check_fail_on(fail_on)
    gate = dict(GATE_LEVELS if levels is None else levels)
    if baseline is not None:
        report = add_findings(report, compare_to_baseline(report, baseline, options, thresholds))
    order = {b.name: i for i, b in enumerate(report.blocks)}
    every = [f for b in report.blocks for f in b.findings] + list(report.findings)
    failing = [f for f in every if at_or_above(gate_severity(f, gate), fail_on)]
    # blocks in model order, then blocks only the baseline has, then the model-level findings
    failing.sort(key=lambda f: order.get(f.block, len(order) + (f.block == "")))
    return Verdict(report=report, failing=failing, fail_on=fail_on, levels=gate)


def check_checkpoints(
    paths: Sequence[PathArg],
    options: InspectOptions | None = None,
    *,
    fail_on: str = FAIL_ON,
    baseline: PathArg | None = None,
    baseline_options: BaselineOptions | None = None,
    levels: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
) -> CheckResult:
    """What `coordatt-diag check` runs: inspect each checkpoint (inputs read once), compare it
    with the baseline, and judge it at `fail_on`.

    Args:
        paths: checkpoint files (glob patterns are expanded).
        options: the inspect options.
        fail_on: "info", "warn" or "fail".
        baseline: a report JSON to compare each checkpoint with.
        baseline_options: the baseline tolerances.
        levels: finding code -> gate level (default `GATE_LEVELS`; see `gate_levels`).
        progress: called with the number of batches done.
        on_checkpoint: called with the index and path before each checkpoint.

    Returns:
        One verdict per checkpoint.

    Raises:
        UsageError, CheckpointError, InputError: as `inspect_checkpoint`; an unreadable baseline
            is an InputError.
    """
    from coordatt_diag.health.thresholds import load_thresholds
    from coordatt_diag.runs.inspect import InspectOptions
    from coordatt_diag.runs.multirun import expand_paths, inspect_checkpoints

    check_fail_on(fail_on)
    gate = dict(GATE_LEVELS if levels is None else levels)
    bopts = baseline_options or BaselineOptions()
    opts = options or InspectOptions()
    thresholds = load_thresholds(opts.config)
    for option, share in ((opt("max_drop"), bopts.max_drop),
                          (opt("max_ratio_drop"), bopts.max_ratio_drop)):
        if not 0 <= share <= 1:  # NaN fails too
            raise UsageError(f"{option} is a share of the baseline value, between 0 and 1; got "
                             f"{share}")
    base = read_report_file(baseline, opt("baseline")) if baseline is not None else None
    if base is not None and not base.blocks:
        raise UsageError(f"{opt('baseline')} {show_path(baseline)} holds no attention block, so it "
                         "cannot catch a regression; write it from the model with "
                         "`coordatt-diag check --write-baseline`")
    files = expand_paths(paths)
    times: list[tuple[str, float]] = []

    def started(i: int, path: Path) -> None:
        times.append((datetime.now().isoformat(timespec="seconds"), time.perf_counter()))
        if on_checkpoint is not None:
            on_checkpoint(i, path)

    reports = inspect_checkpoints(files, opts, progress, started)
    times.append(("", time.perf_counter()))
    verdicts = []
    for i, report in enumerate(reports):
        v = judge_report(report, fail_on, base, bopts, thresholds, gate)
        verdicts.append(dataclasses.replace(
            v, baseline=str(baseline) if baseline is not None else None,
            started=times[i][0], seconds=round(times[i + 1][1] - times[i][1], 3)))
    return CheckResult(verdicts=verdicts, fail_on=fail_on,
                       baseline=str(baseline) if baseline is not None else None, options=bopts,
                       levels=gate)
