"""The `coordatt-diag` command line: parse options, call one library function, render its result.

torch and matplotlib are imported inside the commands, so `--help` and `--version` stay fast.
Failures become exit codes here and only here (`_guard`, `_Group.main`; the table is in
`coordatt_diag.errors` and docs/exit-codes.md): domain errors their own code, click's usage
errors 2, SIGINT 130 and SIGTERM 143, anything else 4; each as one `error:` line on stderr. Every
file a command writes is staged and committed when the command has succeeded
(`coordatt_diag.reports.atomic.staged`), and a closed stdout (`| head`) never changes the exit
code.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.24 vendors click
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as _cx  # type: ignore[no-redef]

from coordatt_diag import __version__
from coordatt_diag.errors import (
    EXIT_INTERNAL,
    EXIT_SIGINT,
    DiagError,
    Interrupted,
    UsageError,
    one_line,
    show_path,
)


class _Group(TyperGroup):
    """The command group, with click's own failures as one `error:` line (exit 2)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False,
                              windows_expand_args=windows_expand_args, **extra)
        except _cx.NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except _cx.ClickException as exc:
            code = exc.exit_code
            hint = ""
            if isinstance(exc, _cx.UsageError) and exc.ctx is not None:
                hint = f" (see {exc.ctx.command_path} --help)"
            typer.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = EXIT_SIGINT
        else:
            code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    cls=_Group,
    name="coordatt-diag",
    help="A mask-health doctor for Coordinate Attention, CBAM and SE blocks in PyTorch models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Help panels: the options of every command grouped by what they are about.
LOADING = "Model loading"
INPUTS = "Inputs"
ANALYSIS = "What to measure"
OUTPUTS = "Outputs"
DEVICE = "Device"
GATE = "Thresholds and gate"

T = TypeVar("T")


def _types_from_metavars() -> None:
    """Help panels name what a parameter takes by its metavar alone: typer (0.29) prints a type
    beside every parameter ("<bool>" beside a flag, "<list[Path]>" beside an argument) whatever
    the metavar says; earlier versions print none)."""
    from typer import core

    option_type = getattr(core.TyperOption, "display_type_rich", None)
    if option_type is None:  # typer 0.28 and earlier ask an argument's type ("<path>")
        argument_init = core.TyperArgument.__init__

        def quiet_argument(self: Any, *args: Any, **kwargs: Any) -> None:
            argument_init(self, *args, **kwargs)
            quiet = copy.copy(self.type)
            quiet.get_metavar = lambda *a, **k: ""
            self.type = quiet

        setattr(core.TyperArgument, "__init__", quiet_argument)  # noqa: B010
        return

    def option(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag else option_type(self, ctx)

    def argument(self: Any, ctx: Any) -> str | None:
        return None

    setattr(core.TyperOption, "display_type_rich", option)  # noqa: B010
    setattr(core.TyperArgument, "display_type_rich", argument)  # noqa: B010


_types_from_metavars()

# Shared options (the same spelling and help in every command that takes them).
CheckpointArg = Annotated[Path, typer.Argument(
    help="Checkpoint file (.pt, .pth, .ckpt, .safetensors).", metavar="CHECKPOINT",
    show_default=False)]
TrustOpt = Annotated[bool, typer.Option(
    "--trust", rich_help_panel=LOADING,
    help="Load with full pickle (runs code from the file). Only for files you trust.")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", rich_help_panel=LOADING, metavar="MODULE:FUNCTION",
    help="Factory pkg.module:function that builds the model for a state dict.")]
ModelArgsOpt = Annotated[str | None, typer.Option(
    "--model-args", rich_help_panel=LOADING, metavar="JSON",
    help='JSON keyword arguments for --model, e.g. \'{"num_classes": 10}\'.')]
ImportOpt = Annotated[list[str] | None, typer.Option(
    "--import", rich_help_panel=LOADING, metavar="MODULE",
    help="Import this module first (the user's block classes). Repeatable.")]
MainModuleOpt = Annotated[Path | None, typer.Option(
    "--main-module", rich_help_panel=LOADING, metavar="SCRIPT.py",
    help="With --trust: the training script that saved the model (torch.save(model) in "
         "train.py); its classes are taken from it without running its "
         "`if __name__ == \"__main__\":` block.")]
PathOpt = Annotated[list[Path] | None, typer.Option(
    "--path", rich_help_panel=LOADING, metavar="DIR",
    help="Add this folder to the import path. Repeatable.")]
ImagesOpt = Annotated[Path | None, typer.Option(
    "--images", rich_help_panel=INPUTS, metavar="PATH",
    help="Image file or folder (recursive; jpg, png, bmp, webp, tif).")]
TensorsOpt = Annotated[Path | None, typer.Option(
    "--tensors", rich_help_panel=INPUTS, metavar="FILE",
    help=".pt file with a tensor (N,C,H,W) or a list of them, or a .npy array.")]
SyntheticOpt = Annotated[bool, typer.Option(
    "--synthetic", rich_help_panel=INPUTS,
    help="Standard-normal inputs (the default when no input is named).")]
ImgszOpt = Annotated[int | None, typer.Option(
    "--imgsz", rich_help_panel=INPUTS, metavar="PIXELS",
    help="Image side after resizing (and of synthetic inputs); default 224, 640 for YOLO models "
    "(letterboxed, rounded up to a multiple of the model's stride).", show_default=False)]
NormalizeOpt = Annotated[str, typer.Option(
    "--normalize", rich_help_panel=INPUTS, metavar="unit|imagenet",
    help="Image scaling: unit (\\[0,1]) or imagenet.")]
BatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", rich_help_panel=INPUTS, metavar="N", help="Samples per batch.")]
BatchesOpt = Annotated[int | None, typer.Option(
    "--batches", rich_help_panel=INPUTS, metavar="N",
    help="Run at most this many batches (default: all; 4 for synthetic).")]
SeedOpt = Annotated[int, typer.Option(
    "--seed", rich_help_panel=INPUTS, metavar="N", help="Seed of the synthetic inputs.")]
BlocksOpt = Annotated[str | None, typer.Option(
    "--blocks", rich_help_panel=ANALYSIS, metavar="REGEX",
    help="Only blocks whose name matches; also names modules the search misses.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", rich_help_panel=GATE, metavar="FILE",
    help="TOML file of thresholds (default: \\[tool.coordatt-diag] in ./pyproject.toml).")]
JsonOpt = Annotated[str | None, typer.Option(
    "--json", rich_help_panel=OUTPUTS, metavar="FILE",
    help="Write the JSON report to this file ('-': stdout, and nothing else there).")]
WideOpt = Annotated[bool, typer.Option(
    "--wide", rich_help_panel=OUTPUTS,
    help="Every column in the terminal table (type, feature size, min, max, saturation); "
    "the default from 120 columns.")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", rich_help_panel=DEVICE, metavar="DEVICE",
    help="cpu, cuda, cuda:N, a GPU index as Ultralytics takes it (0, or 0,1: the process's "
    "GPU from the list), or auto (default: CUDA when torch sees a GPU; under torchrun the local "
    "rank's GPU).")]
HalfOpt = Annotated[bool, typer.Option(
    "--half", rich_help_panel=DEVICE,
    help="Run the model in half precision (CUDA only); statistics stay float32.")]
HalfDtypeOpt = Annotated[str, typer.Option(
    "--half-dtype", rich_help_panel=DEVICE, metavar="float16|bfloat16",
    help="The half precision of --half.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]
EffectOpt = Annotated[bool, typer.Option(
    "--effect", rich_help_panel=ANALYSIS,
    help="Also measure each block's mask effect: run the inputs again with the block's masks "
    "replaced by their positional mean and by a constant, and report how much the output "
    "changes. Costs 1 + 2 x blocks extra forward passes per batch; --blocks limits it.")]
LabelsOpt = Annotated[Path | None, typer.Option(
    "--labels", rich_help_panel=ANALYSIS, metavar="FILE",
    help="With --effect: .pt or .npy file of integer class indices, one per input sample in "
    "--tensors / --images order, for the accuracy change.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coordatt-diag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """A mask-health doctor for Coordinate Attention, CBAM and SE blocks in PyTorch models."""


class _PipeSafe:
    """stdout that survives a closed pipe (`coordatt-diag check ... | head`): the first
    BrokenPipeError sends the rest of the output to /dev/null, and the command goes on to write its
    files and return its verdict's exit code."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.broken = False

    def _closed(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            n = self._stream.write(text)
            self._stream.flush()
            return n
        except BrokenPipeError:
            self._closed()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self._closed()
        return len(text)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def __getattr__(self, name: str) -> Any:
        if name == "buffer":  # writers (click's echo) must go through write(), not around it
            raise AttributeError(name)
        return getattr(self._stream, name)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread while a command runs, so that
    staged outputs, temporary folders, hooks and modes are cleaned up on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            handler = signal.getsignal(sig)
            if handler is signal.SIG_IGN:  # e.g. nohup, or a parent that ignores SIGINT
                continue
            old[sig] = handler
            signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, handler in old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _safe_stdout() -> Iterator[_PipeSafe]:
    wrapper = _PipeSafe(sys.stdout)
    old = sys.stdout
    sys.stdout = wrapper  # type: ignore[assignment]
    try:
        yield wrapper
    finally:
        sys.stdout = old
        if wrapper.broken:
            with contextlib.suppress(OSError, ValueError):
                old.flush()


def _check_outputs(outputs: Mapping[str, Path | str | None], folders: Mapping[str, Path | None],
                   inputs: Sequence[Path | None]) -> None:
    """Every output path before anything runs: not empty, writable, not an input, not twice."""
    from coordatt_diag.reports.atomic import check_output_folder, check_output_path

    ins = tuple(Path(p) for p in inputs if p is not None and str(p))
    seen: dict[str, str] = {}
    for option, value in outputs.items():
        if value is None or str(value) == "-":
            continue
        check_output_path(value, option, ins)
        key = os.path.abspath(value)
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} name the same file "
                             f"{show_path(value)}; name two files")
        seen[key] = option
    for option, folder in folders.items():
        if folder is not None:
            check_output_folder(folder, option)


def _guard(debug: bool, fn: Callable[[], T], *,
           outputs: Mapping[str, Path | str | None] | None = None,
           folders: Mapping[str, Path | None] | None = None,
           inputs: Sequence[Path | None] = ()) -> T:
    """Run a command body: outputs checked first and staged until it succeeds, SIGINT/SIGTERM
    and a closed stdout handled, every failure mapped to its exit code and one line on stderr.

    A `typer.Exit` with code 0 or 1 (check's verdict) is a success: the outputs are committed.
    """
    from coordatt_diag.reports.atomic import staged

    verdict: typer.Exit | None = None
    try:
        with _signals(), _safe_stdout():
            _check_outputs(outputs or {}, folders or {}, inputs)
            with staged():
                try:
                    result = fn()
                except typer.Exit as exc:
                    if exc.exit_code not in (0, 1):
                        raise
                    verdict = exc
        if verdict is not None:
            raise verdict
        return result
    except typer.Exit:
        raise
    except DiagError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {show_path(exc.cli_message())}", err=True)  # a newline in a name escaped
        raise typer.Exit(exc.exit_code) from None
    except (KeyboardInterrupt, Interrupted) as exc:
        what = exc.name if isinstance(exc, Interrupted) else "SIGINT"
        code = exc.exit_code if isinstance(exc, Interrupted) else EXIT_SIGINT
        typer.echo(f"error: interrupted by {what}; no output was written", err=True)
        raise typer.Exit(code) from None
    except Exception as exc:  # noqa: BLE001 - the one boundary for unexpected errors
        if debug:
            traceback.print_exc()
        typer.echo(f"error: internal error: {type(exc).__name__}: {one_line(str(exc))} (rerun "
                   "with --debug and report it)", err=True)
        raise typer.Exit(EXIT_INTERNAL) from None


class _ProgressBar:
    """A progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int | None, label: str) -> None:
        self.bar: Any = None
        if sys.stderr.isatty() and not os.environ.get("CI"):
            from rich.progress import Progress

            self.bar = Progress(transient=True, console=None)
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self) -> _ProgressBar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def stage(self, label: str) -> Callable[[int], None]:
        """Progress of a later pass, a second line of the same bar, shown from its first call."""
        task: list[Any] = []

        def update(done: int) -> None:
            if self.bar is None:
                return
            if not task:
                task.append(self.bar.add_task(label, total=None))
            self.bar.update(task[0], completed=done)

        return update


def _writer() -> bool:
    """False on ranks > 0 of a torchrun run: only rank 0 prints and writes."""
    from coordatt_diag.runs.distributed import is_writer

    return is_writer()


def _emit_report(report: Any, json_out: str | None, wide: bool = False) -> None:
    if not _writer():
        return
    from coordatt_diag.reports.json_report import report_json, write_report
    from coordatt_diag.reports.terminal import make_console, render

    if json_out == "-":
        sys.stdout.write(report_json(report))
        return
    if json_out:
        write_report(report, Path(json_out))
    render(report, make_console(), wide=wide or None)


def _load_torch() -> None:
    """Import torch, then `gc.freeze()`: its half a million objects leave the cyclic collector's
    generations, so that the next full collection (which the imports that follow set off) does
    not walk them all; 0.08 s of the inspect command's start on this project's machine. Frozen
    objects are never collected: torch's modules live as long as the process anyway."""
    import gc

    import torch  # noqa: F401

    gc.freeze()


def _inspect_options(**kw: Any) -> Any:
    from coordatt_diag.errors import UsageError
    from coordatt_diag.runs.inspect import InspectOptions

    if kw.pop("synthetic") and (kw["images"] is not None or kw["tensors"] is not None):
        raise UsageError("--synthetic cannot be combined with --images or --tensors")
    kw["imports"] = tuple(kw["imports"] or ())
    kw["paths"] = tuple(kw["paths"] or ())
    return InspectOptions(**kw)


@app.command()
def inspect(
    checkpoint: CheckpointArg,
    trust: TrustOpt = False,
    model: ModelOpt = None,
    model_args: ModelArgsOpt = None,
    imports: ImportOpt = None,
    main_module: MainModuleOpt = None,
    path: PathOpt = None,
    images: ImagesOpt = None,
    tensors: TensorsOpt = None,
    synthetic: SyntheticOpt = False,
    imgsz: ImgszOpt = None,
    normalize: NormalizeOpt = "unit",
    batch_size: BatchSizeOpt = 8,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    blocks: BlocksOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    wide: WideOpt = False,
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    effect: EffectOpt = False,
    labels: LabelsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Find every attention block, stream its mask statistics over the inputs, judge its health.

    Example: coordatt-diag inspect runs/exp/weights/last.pt --images samples/ --trust

    With --effect the inputs are run once more, plus two forward passes per block and batch.
    """

    def body() -> None:
        _load_torch()
        from coordatt_diag.runs.inspect import inspect_checkpoint

        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
            effect=effect, labels=labels,
        )
        with _ProgressBar(batches, "inspect") as bar:
            report = inspect_checkpoint(checkpoint, opts, progress=bar,
                                        effect_progress=bar.stage("mask effect"))
        _emit_report(report, json_out, wide)

    _guard(debug, body, outputs={"--json": json_out},
           inputs=[checkpoint, images, tensors, config, labels])


# --- check, trend, compare (issue #7): the CI gate, trends across checkpoints, A/B comparison ---

CheckpointsArg = Annotated[list[Path], typer.Argument(
    help="Checkpoint files (.pt, .pth, .ckpt, .safetensors); glob patterns are expanded.",
    metavar="CHECKPOINT", show_default=False)]
FailOnOpt = Annotated[str, typer.Option(
    "--fail-on", rich_help_panel=GATE, metavar="info|warn|fail",
    help="Least severe finding that fails the check (near_constant counts as fail, see "
    "--level).")]
LevelOpt = Annotated[list[str] | None, typer.Option(
    "--level", rich_help_panel=GATE, metavar="CODE=LEVEL",
    help="Count a finding code at this level in the gate, e.g. dead_weight=fail; "
    "near_constant=warn counts near-constant masks as the report does (by default they fail). "
    "Repeatable.")]
BaselineOpt = Annotated[Path | None, typer.Option(
    "--baseline", rich_help_panel=GATE, metavar="FILE",
    help="Earlier report JSON of the same architecture to compare with.")]
MaxDropOpt = Annotated[float, typer.Option(
    "--max-drop", rich_help_panel=GATE, metavar="SHARE",
    help="A mask std or positional std that fell by more than this share of its baseline value "
    "is a regression.")]
MaxRatioDropOpt = Annotated[float, typer.Option(
    "--max-ratio-drop", rich_help_panel=GATE, metavar="SHARE",
    help="A std ratio that fell by more than this share of its baseline value is a regression.")]
WriteBaselineOpt = Annotated[Path | None, typer.Option(
    "--write-baseline", rich_help_panel=OUTPUTS, metavar="FILE",
    help="Write the report JSON here, to serve as a later --baseline.")]
JunitOpt = Annotated[Path | None, typer.Option(
    "--junit", rich_help_panel=OUTPUTS, metavar="FILE",
    help="Write JUnit XML here (a testsuite per checkpoint, a testcase per block).")]
TrendSourcesArg = Annotated[list[Path], typer.Argument(
    help="Checkpoint files (.pt, .pth, .ckpt, .safetensors; glob patterns are expanded), or one "
    "watch history (history.jsonl, written by coordatt_diag.watch.MaskWatch).",
    show_default=False)]
OutDirOpt = Annotated[Path | None, typer.Option(
    "--out", rich_help_panel=OUTPUTS, metavar="DIR",
    help="Folder for the PNG plots (mask_std, pos_std, std_ratio).")]
SourceArg = Annotated[Path, typer.Argument(
    help="Checkpoint, or report JSON (.json) written by inspect --json / check "
    "--write-baseline.", metavar="SOURCE", show_default=False)]


@app.command()
def check(
    checkpoints: CheckpointsArg,
    trust: TrustOpt = False,
    model: ModelOpt = None,
    model_args: ModelArgsOpt = None,
    imports: ImportOpt = None,
    main_module: MainModuleOpt = None,
    path: PathOpt = None,
    images: ImagesOpt = None,
    tensors: TensorsOpt = None,
    synthetic: SyntheticOpt = False,
    imgsz: ImgszOpt = None,
    normalize: NormalizeOpt = "unit",
    batch_size: BatchSizeOpt = 8,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    blocks: BlocksOpt = None,
    config: ConfigOpt = None,
    fail_on: FailOnOpt = "fail",
    level: LevelOpt = None,
    baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = 0.5,
    max_ratio_drop: MaxRatioDropOpt = 0.3,
    write_baseline: WriteBaselineOpt = None,
    junit: JunitOpt = None,
    json_out: JsonOpt = None,
    wide: WideOpt = False,
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    effect: EffectOpt = False,
    labels: LabelsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Health gate for CI: exit 1 when a finding is at or above --fail-on (near-constant masks
    count as fail; see --level), else 0; the last line counts the warnings let through.

    Example: coordatt-diag check best.pt --images samples/ --trust --fail-on warn --junit health.xml
    """

    def body() -> None:
        _load_torch()
        from coordatt_diag.errors import EXIT_UNHEALTHY, UsageError
        from coordatt_diag.reports.check import emit_check
        from coordatt_diag.runs.check import (
            BaselineOptions,
            check_checkpoints,
            check_fail_on,
            gate_levels,
        )

        check_fail_on(fail_on)
        levels = gate_levels(level or ())
        tolerances = BaselineOptions(max_drop=max_drop, max_ratio_drop=max_ratio_drop)
        if write_baseline is not None and len(checkpoints) != 1:
            raise UsageError("--write-baseline needs exactly one checkpoint")
        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
            effect=effect, labels=labels,
        )
        with _ProgressBar(None, "check") as bar:
            result = check_checkpoints(checkpoints, opts, fail_on=fail_on, baseline=baseline,
                                       baseline_options=tolerances, levels=levels,
                                       progress=bar)
        if _writer():
            emit_check(result, json_out=json_out, junit=junit, write_baseline=write_baseline,
                       wide=wide or None)
        if not result.healthy:
            raise typer.Exit(EXIT_UNHEALTHY)

    _guard(debug, body, outputs={"--json": json_out, "--junit": junit,
                                 "--write-baseline": write_baseline},
           inputs=[*checkpoints, images, tensors, config, baseline])


@app.command()
def trend(
    checkpoints: TrendSourcesArg,
    trust: TrustOpt = False,
    model: ModelOpt = None,
    model_args: ModelArgsOpt = None,
    imports: ImportOpt = None,
    main_module: MainModuleOpt = None,
    path: PathOpt = None,
    images: ImagesOpt = None,
    tensors: TensorsOpt = None,
    synthetic: SyntheticOpt = False,
    imgsz: ImgszOpt = None,
    normalize: NormalizeOpt = "unit",
    batch_size: BatchSizeOpt = 8,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    blocks: BlocksOpt = None,
    config: ConfigOpt = None,
    out: OutDirOpt = None,
    json_out: JsonOpt = None,
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    effect: EffectOpt = False,
    labels: LabelsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Mask std, positional std and std ratio of every block across checkpoints, in epoch order.

    Example: coordatt-diag trend runs/exp/weights/epoch*.pt --images samples/ --trust --out plots/

    A watch's history needs no model or inputs: coordatt-diag trend runs/exp/mask-health/history.jsonl
    """

    def body() -> None:
        _load_torch()
        from coordatt_diag.reports.trend import emit_trend
        from coordatt_diag.runs.trend import trend_checkpoints

        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
            effect=effect, labels=labels,
        )
        with _ProgressBar(None, "trend") as bar:
            result = trend_checkpoints(checkpoints, opts, progress=bar)
        if _writer():
            emit_trend(result, json_out=json_out, out_dir=out)

    _guard(debug, body, outputs={"--json": json_out}, folders={"--out": out},
           inputs=[*checkpoints, images, tensors, config])


@app.command()
def compare(
    a: SourceArg,
    b: SourceArg,
    trust: TrustOpt = False,
    model: ModelOpt = None,
    model_args: ModelArgsOpt = None,
    imports: ImportOpt = None,
    main_module: MainModuleOpt = None,
    path: PathOpt = None,
    images: ImagesOpt = None,
    tensors: TensorsOpt = None,
    synthetic: SyntheticOpt = False,
    imgsz: ImgszOpt = None,
    normalize: NormalizeOpt = "unit",
    batch_size: BatchSizeOpt = 8,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    blocks: BlocksOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    wide: WideOpt = False,
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    effect: EffectOpt = False,
    labels: LabelsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Two checkpoints (or report JSONs) side by side: each block's change, findings new and gone.

    Example: coordatt-diag compare a.pt b.pt --images samples/ --trust
    """

    def body() -> None:
        _load_torch()
        from coordatt_diag.reports.compare import emit_compare
        from coordatt_diag.runs.compare import compare_sources

        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
            effect=effect, labels=labels,
        )
        with _ProgressBar(None, "compare") as bar:
            result = compare_sources(a, b, opts, progress=bar)
        if _writer():
            emit_compare(result, json_out=json_out, wide=wide or None)

    _guard(debug, body, outputs={"--json": json_out},
           inputs=[a, b, images, tensors, config])


# --- report (issue #6): a folder with a self-contained HTML page, Markdown and plots ---

ReportSourceArg = Annotated[Path | None, typer.Argument(
    help="Checkpoint file (.pt, .pth, .ckpt, .safetensors); leave it out with --from-json.",
    metavar="CHECKPOINT", show_default=False)]
ReportOutOpt = Annotated[Path, typer.Option(
    "--out", rich_help_panel=OUTPUTS, metavar="DIR",
    help="Folder to write (index.html, report.md, report.json, plots/).", show_default=False)]
FromJsonOpt = Annotated[Path | None, typer.Option(
    "--from-json", rich_help_panel=INPUTS, metavar="FILE",
    help="Render this report JSON (from inspect --json), or the latest probe of a watch history "
    "(history.jsonl), instead of running a model; no overlays.")]
OverlaysOpt = Annotated[int, typer.Option(
    "--overlays", rich_help_panel=OUTPUTS, metavar="N",
    help="Sample images shown with each block's mask laid over them (0: none).")]
FormatOpt = Annotated[str, typer.Option(
    "--format", rich_help_panel=OUTPUTS, metavar="png|svg", help="Figure format.")]
OverlayScaleOpt = Annotated[str, typer.Option(
    "--overlay-scale", rich_help_panel=OUTPUTS, metavar="absolute|block",
    help="Overlay colours: 'absolute' (mask value 0 to 1, the same for every block) or 'block' "
         "(each block stretched over its own range).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", rich_help_panel=OUTPUTS,
    help="Replace --out even when it holds something other than a previous report.")]


@app.command()
def report(
    out: ReportOutOpt,
    checkpoint: ReportSourceArg = None,
    from_json: FromJsonOpt = None,
    overlays: OverlaysOpt = 4,
    fmt: FormatOpt = "png",
    overlay_scale: OverlayScaleOpt = "absolute",
    force: ForceOpt = False,
    trust: TrustOpt = False,
    model: ModelOpt = None,
    model_args: ModelArgsOpt = None,
    imports: ImportOpt = None,
    main_module: MainModuleOpt = None,
    path: PathOpt = None,
    images: ImagesOpt = None,
    tensors: TensorsOpt = None,
    synthetic: SyntheticOpt = False,
    imgsz: ImgszOpt = None,
    normalize: NormalizeOpt = "unit",
    batch_size: BatchSizeOpt = 8,
    batches: BatchesOpt = None,
    seed: SeedOpt = 0,
    blocks: BlocksOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    effect: EffectOpt = False,
    labels: LabelsOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Write a report folder: index.html (self-contained), report.md, report.json and plots.

    Example: coordatt-diag report runs/exp/weights/best.pt --images samples/ --trust --out diag/

    With --effect the pages get a mask-effect table (the inputs are run once more, as in inspect).
    """

    def body() -> None:
        if from_json is None:
            _load_torch()
        from coordatt_diag.reports.report_command import make_report

        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
            effect=effect, labels=labels,
        )
        with _ProgressBar(batches, "report") as bar:
            folder = make_report(out, checkpoint, opts, from_json=from_json, overlays=overlays,
                                 fmt=fmt, force=force, overlay_scale=overlay_scale, progress=bar,
                                 effect_progress=bar.stage("mask effect"))
        if folder is None:
            return
        s = folder.report.summary
        plots = sum(f.startswith("plots/") for f in folder.files)
        typer.echo(f"wrote {folder.index} (and report.md, report.json, {plots} plots): "
                   f"{s.blocks} blocks, {s.ok} ok, {s.warn} warn, {s.fail} fail -> "
                   f"{s.status.upper()}")

    _guard(debug, body, inputs=[checkpoint, from_json, images, tensors, config, labels])


def main() -> None:
    """Console-script entry point: the command, then a quick exit (see `_exit`)."""
    try:
        app()
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: object) -> None:
    """Leave the process without the interpreter's teardown.

    After torch is loaded, the interpreter's own exit (collecting every module and object,
    torch's static destructors) takes seconds on a loaded machine, more than the rest of a short
    run; the command has done its work by then. Registered exit handlers still run (the
    distributed process group, temporary folders, logging), and the standard streams are flushed
    first; the exit status is the command's.
    """
    import atexit
    import contextlib

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1, as the interpreter does
        print(code, file=sys.stderr)
        status = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            # closed, or a closed pipe: nothing more to save
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


if __name__ == "__main__":
    main()
