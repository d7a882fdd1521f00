"""The `coordatt-diag` command line: parse options, call one library function, render its result.

torch and matplotlib are imported inside the commands, so `--help` and `--version` stay fast.
Domain errors become exit codes here and only here (see `coordatt_diag.errors`).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from coordatt_diag import __version__
from coordatt_diag.errors import EXIT_INTERNAL, DiagError

app = typer.Typer(
    name="coordatt-diag",
    help="A mask-health doctor for Coordinate Attention, CBAM and SE blocks in PyTorch models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

T = TypeVar("T")

# Shared options (the same spelling and help in every command that takes them).
CheckpointArg = Annotated[Path, typer.Argument(help="Checkpoint file (.pt, .pth, .ckpt, "
                                               ".safetensors).",
                                               show_default=False)]
TrustOpt = Annotated[bool, typer.Option(
    "--trust", help="Load with full pickle (runs code from the file). Only for files you trust.")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Factory pkg.module:function that builds the model for a state dict.")]
ModelArgsOpt = Annotated[str | None, typer.Option(
    "--model-args", help='JSON keyword arguments for --model, e.g. \'{"num_classes": 10}\'.')]
ImportOpt = Annotated[list[str] | None, typer.Option(
    "--import", help="Import this module first (the user's block classes). Repeatable.")]
MainModuleOpt = Annotated[Path | None, typer.Option(
    "--main-module", metavar="SCRIPT.py",
    help="With --trust: the training script that saved the model (torch.save(model) in "
         "train.py); its classes are taken from it without running its "
         "`if __name__ == \"__main__\":` block.")]
PathOpt = Annotated[list[Path] | None, typer.Option(
    "--path", help="Add this folder to the import path. Repeatable.")]
ImagesOpt = Annotated[Path | None, typer.Option(
    "--images", help="Image file or folder (recursive; jpg, png, bmp, webp, tif).")]
TensorsOpt = Annotated[Path | None, typer.Option(
    "--tensors", help=".pt file with a tensor (N,C,H,W) or a list of them, or a .npy array.")]
SyntheticOpt = Annotated[bool, typer.Option(
    "--synthetic", help="Standard-normal inputs (the default when no input is named).")]
ImgszOpt = Annotated[int | None, typer.Option(
    "--imgsz", help="Image side after resizing (and of synthetic inputs); default 224, 640 for "
    "YOLO models (letterboxed, rounded up to a multiple of the model's stride).",
    show_default=False)]
NormalizeOpt = Annotated[str, typer.Option("--normalize", help="Image scaling: unit ([0,1]) or "
                                           "imagenet.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Samples per batch.")]
BatchesOpt = Annotated[int | None, typer.Option(
    "--batches", help="Run at most this many batches (default: all; 4 for synthetic).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the synthetic inputs.")]
BlocksOpt = Annotated[str | None, typer.Option(
    "--blocks", help="Regex: only blocks whose name matches; also names modules the search "
    "misses.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="TOML file of thresholds (default: [tool.coordatt-diag] in ./pyproject.toml)."
)]
JsonOpt = Annotated[str | None, typer.Option(
    "--json", help="Write the JSON report to this file ('-': stdout, and nothing else there).")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="cpu, cuda, cuda:N or auto (default: auto, CUDA when torch sees a GPU; under "
    "torchrun the local rank's GPU).")]
HalfOpt = Annotated[bool, typer.Option(
    "--half", help="Run the model in half precision (CUDA only); statistics stay float32.")]
HalfDtypeOpt = Annotated[str, typer.Option(
    "--half-dtype", help="The half precision of --half: float16 or bfloat16.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]
EffectOpt = Annotated[bool, typer.Option(
    "--effect", help="Also measure each block's mask effect: run the inputs again with the "
    "block's masks replaced by their positional mean and by a constant, and report how much the "
    "output changes. Costs 1 + 2 x blocks extra forward passes per batch; --blocks limits it.")]
LabelsOpt = Annotated[Path | None, typer.Option(
    "--labels", help="With --effect: .pt or .npy file of integer class indices, one per input "
    "sample in --tensors / --images order, for the accuracy drop.")]


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


def _guard(debug: bool, fn: Callable[[], T]) -> T:
    """Run a command body; map domain errors to their exit code and one line on stderr."""
    try:
        return fn()
    except typer.Exit:
        raise
    except DiagError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {exc.cli_message()}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the one boundary for unexpected errors
        if debug:
            traceback.print_exc()
        typer.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug and "
                   "report it)", err=True)
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


def _emit_report(report: Any, json_out: str | None) -> None:
    if not _writer():
        return
    from coordatt_diag.reports.json_report import report_json, write_report
    from coordatt_diag.reports.terminal import make_console, render

    if json_out == "-":
        sys.stdout.write(report_json(report))
        return
    if json_out:
        write_report(report, Path(json_out))
    render(report, make_console())


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
        _emit_report(report, json_out)

    _guard(debug, body)


# --- check, trend, compare (issue #7): the CI gate, trends across checkpoints, A/B comparison ---

CheckpointsArg = Annotated[list[Path], typer.Argument(
    help="Checkpoint files (.pt, .pth, .ckpt, .safetensors); glob patterns are expanded.",
    show_default=False)]
FailOnOpt = Annotated[str, typer.Option(
    "--fail-on", help="Least severe finding that fails the check: info, warn or fail.")]
BaselineOpt = Annotated[Path | None, typer.Option(
    "--baseline", help="Earlier report JSON of the same architecture to compare with.")]
MaxDropOpt = Annotated[float, typer.Option(
    "--max-drop", help="A mask std or positional std that fell by more than this share of its "
    "baseline value is a regression.")]
MaxRatioDropOpt = Annotated[float, typer.Option(
    "--max-ratio-drop", help="A std ratio that fell by more than this share of its baseline value "
    "is a regression.")]
WriteBaselineOpt = Annotated[Path | None, typer.Option(
    "--write-baseline", help="Write the report JSON here, to serve as a later --baseline.")]
JunitOpt = Annotated[Path | None, typer.Option(
    "--junit", help="Write JUnit XML here (a testsuite per checkpoint, a testcase per block).")]
OutDirOpt = Annotated[Path | None, typer.Option(
    "--out", help="Folder for the PNG plots (mask_std, pos_std, std_ratio).")]
SourceArg = Annotated[Path, typer.Argument(
    help="Checkpoint, or report JSON (.json) written by inspect --json / check "
    "--write-baseline.", show_default=False)]


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
    baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = 0.5,
    max_ratio_drop: MaxRatioDropOpt = 0.3,
    write_baseline: WriteBaselineOpt = None,
    junit: JunitOpt = None,
    json_out: JsonOpt = None,
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    debug: DebugOpt = False,
) -> None:
    """Health gate for CI: exit 1 when a finding is at or above --fail-on (0 when healthy).

    Example: coordatt-diag check best.pt --images samples/ --trust --fail-on warn --junit health.xml
    """

    def body() -> None:
        from coordatt_diag.errors import EXIT_UNHEALTHY, UsageError
        from coordatt_diag.reports.check import emit_check
        from coordatt_diag.runs.check import BaselineOptions, check_checkpoints, check_fail_on

        check_fail_on(fail_on)
        tolerances = BaselineOptions(max_drop=max_drop, max_ratio_drop=max_ratio_drop)
        if write_baseline is not None and len(checkpoints) != 1:
            raise UsageError("--write-baseline needs exactly one checkpoint")
        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
        )
        with _ProgressBar(None, "check") as bar:
            result = check_checkpoints(checkpoints, opts, fail_on=fail_on, baseline=baseline,
                                       baseline_options=tolerances, progress=bar)
        if _writer():
            emit_check(result, json_out=json_out, junit=junit, write_baseline=write_baseline)
        if not result.healthy:
            raise typer.Exit(EXIT_UNHEALTHY)

    _guard(debug, body)


@app.command()
def trend(
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
    out: OutDirOpt = None,
    json_out: JsonOpt = None,
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    debug: DebugOpt = False,
) -> None:
    """Mask std, positional std and std ratio of every block across checkpoints, in epoch order.

    Example: coordatt-diag trend runs/exp/weights/epoch*.pt --images samples/ --trust --out plots/
    """

    def body() -> None:
        from coordatt_diag.reports.trend import emit_trend
        from coordatt_diag.runs.trend import trend_checkpoints

        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
        )
        with _ProgressBar(None, "trend") as bar:
            result = trend_checkpoints(checkpoints, opts, progress=bar)
        if _writer():
            emit_trend(result, json_out=json_out, out_dir=out)

    _guard(debug, body)


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
    device: DeviceOpt = None,
    half: HalfOpt = False,
    half_dtype: HalfDtypeOpt = "float16",
    debug: DebugOpt = False,
) -> None:
    """Two checkpoints (or report JSONs) side by side: each block's change, findings new and gone.

    Example: coordatt-diag compare a.pt b.pt --images samples/ --trust
    """

    def body() -> None:
        from coordatt_diag.reports.compare import emit_compare
        from coordatt_diag.runs.compare import compare_sources

        opts = _inspect_options(
            trust=trust, model=model, model_args=model_args, imports=imports, paths=path,
            main_module=main_module,
            images=images, tensors=tensors, synthetic=synthetic, imgsz=imgsz,
            normalize=normalize, batch_size=batch_size, batches=batches, seed=seed,
            blocks=blocks, config=config, device=device, half=half, half_dtype=half_dtype,
        )
        with _ProgressBar(None, "compare") as bar:
            result = compare_sources(a, b, opts, progress=bar)
        if _writer():
            emit_compare(result, json_out=json_out)

    _guard(debug, body)


# --- report (issue #6): a folder with a self-contained HTML page, Markdown and plots ---

ReportSourceArg = Annotated[Path | None, typer.Argument(
    help="Checkpoint file (.pt, .pth, .ckpt, .safetensors); leave it out with --from-json.",
    show_default=False)]
ReportOutOpt = Annotated[Path, typer.Option(
    "--out", help="Folder to write (index.html, report.md, report.json, plots/).",
    show_default=False)]
FromJsonOpt = Annotated[Path | None, typer.Option(
    "--from-json", help="Render this report JSON (from inspect --json) instead of running a "
    "model; no overlays.")]
OverlaysOpt = Annotated[int, typer.Option(
    "--overlays", help="Sample images shown with each block's mask laid over them (0: none).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Figure format: png or svg.")]
OverlayScaleOpt = Annotated[str, typer.Option(
    "--overlay-scale", metavar="absolute|block",
    help="Overlay colours: 'absolute' (mask value 0 to 1, the same for every block) or 'block' "
         "(each block stretched over its own range).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace --out even when it holds something other than a previous report.")]


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

    _guard(debug, body)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
