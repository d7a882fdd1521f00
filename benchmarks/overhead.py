"""What watching the masks costs, side by side in one interleaved run.

Models (`benchmarks/models.py`, random weights): `mobilenetv2`, a MobileNetV2 with a Coordinate
Attention block in every inverted residual (the CoordAtt paper's ImageNet model), batches of
8x3x224x224; `yolo`, a YOLOv8n-sized detector with 7 CoordAtt blocks, batches of 8x3x640x640.

Every repetition runs each variant once, in turn (so a change in the machine's load hits them all
alike), over the same --batches batches; figures are ratios to the plain variant of the same
repetition, min / median / max over --runs repetitions, with the load average (1 min) read at
each repetition beside them:

* in one process, at each of --threads (e.g. `1,2`):
  - `plain`: `model(x)` under `torch.inference_mode`;
  - `hooks`: a hand-written baseline, forward hooks on each block's two gate convolutions that
    take the sigmoid and keep its mean and std (no host transfer);
  - `per-batch`: the batches under `inspect`'s capture and accumulators (blocks known);
  - with `--parts`, `std ratio` and `mask stats`: the capture with only the std ratio's
    moments taken, and with only the masks' statistics (the per-batch path's two halves);
  - `library`: `analyze_model` on the batches: discovery on the first batch's first samples
    (their statistics kept), the memory check, the rest of the batches, the judged report;
  - `torchinfo` / `torchlens`, when installed (skipped otherwise);
* `--process`: the whole process, `coordatt-diag inspect` (its entry point, `cli.main`) on a
  saved checkpoint (synthetic inputs, the batches above, --json) against a script that imports
  torch, loads the same checkpoint into the model and runs the same forward passes, both 1
  thread; each registers, first, an exit handler that notes the time, so the exit (what follows
  the last handler) is timed in the same runs;
* the phase table: where the whole process's extra time goes (imports beyond torch, the exit,
  the per-batch statistics, the library path's fixed costs, discovery alone, the memory probe,
  rendering), medians over the runs, and the discovery pass over the first batch's first
  samples against a plain forward of them (traced, and traced keeping the run's statistics).

Memory over --mem-batches batches under the capture (RSS after glibc returns its free pages).

Usage:
    python benchmarks/overhead.py [--model mobilenetv2|yolo] [--runs 7] [--batches 10]
        [--batch-size 8] [--imgsz N] [--threads 1,2] [--process] [--parts] [--device cpu|cuda]
        [--half] [--mem-batches 0]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from coordatt_diag.capture.engine import (
    DISCOVERY_BATCH,
    BlockCall,
    MaskCapture,
    discover_blocks,
    trace_blocks,
)
from coordatt_diag.load.memory import measure_activations
from coordatt_diag.runs.inspect import RunState, analyze_model, finalize
from coordatt_diag.stats.masks import MaskAccumulator, sample_moments

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from models import mobilenet_v2_coordatt, yolo_coordatt  # noqa: E402

MODELS = {"mobilenetv2": (mobilenet_v2_coordatt, "mobilenet_v2_coordatt", 224),
          "yolo": (yolo_coordatt, "yolo_coordatt", 640)}


def load1() -> float:
    return os.getloadavg()[0]


def trimmed_rss_mib() -> float:
    """Resident memory after glibc has returned its free pages (malloc_trim)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Series:
    """Wall and CPU times of one variant, one per repetition, with the load average at each."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.loads: list[float] = []

    def add(self, seconds: float, cpu: float = math.nan) -> None:
        self.times.append(seconds)
        self.cpu.append(cpu)
        self.loads.append(load1())


def ratio_line(name: str, s: Series, base: Series, width: int = 12) -> str:
    ratios = [t / b for t, b in zip(s.times, base.times, strict=True)]
    cpu = [t / b for t, b in zip(s.cpu, base.cpu, strict=True)]
    return (f"  {name:<{width}} median {statistics.median(s.times):7.3f} s  wall ratio min "
            f"{min(ratios):.3f} median {statistics.median(ratios):.3f} max {max(ratios):.3f}  "
            f"CPU-time ratio median {statistics.median(cpu):.3f}  "
            f"(load {min(s.loads):.2f}-{max(s.loads):.2f})")


def hook_baseline(model: torch.nn.Module) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """Forward hooks on every CoordAtt block's gate convolutions: sigmoid, mean and std."""
    kept: list[torch.Tensor] = []
    handles = []

    def hook(_m: Any, _a: Any, out: torch.Tensor) -> None:
        a = out.sigmoid()
        kept.append(torch.stack([a.mean(), a.std()]))

    for m in model.modules():
        if type(m).__name__ == "CoordAtt":
            handles += [m.conv_h.register_forward_hook(hook), m.conv_w.register_forward_hook(hook)]
    return (lambda: [h.remove() for h in handles]), kept


def forwards(model: torch.nn.Module, xs: list[torch.Tensor]) -> None:
    """The plain forward passes."""
    with torch.inference_mode():
        for x in xs:
            model(x)


def captured(state_cls: Any, specs: Any, model: torch.nn.Module, xs: list[torch.Tensor]) -> None:
    """The same passes under a run's capture and accumulators, blocks known (`state_cls`: a
    `RunState`, of this package or of another version's)."""
    state = state_cls(blocks=specs)
    with torch.inference_mode(), state.capture(model):
        for x in xs:
            model(x)


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    return timed2(fn, sync)[0]


def timed2(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU seconds of `fn` (CPU: this process, every thread)."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def in_process(args: argparse.Namespace, threads: int) -> dict[str, Series]:
    torch.set_num_threads(threads)
    build, _, default = MODELS[args.model]
    dev = torch.device(args.device)
    dtype = torch.float16 if args.half else torch.float32
    torch.manual_seed(0)
    model = build().to(dev, dtype).eval()
    imgsz = args.imgsz or default
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(args.batch_size, 3, imgsz, imgsz, generator=gen).to(dev, dtype)
          for _ in range(args.batches)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        specs = discover_blocks(model, xs[0][:2])

    def plain() -> None:
        forwards(model, xs)

    def hooks() -> None:
        remove, kept = hook_baseline(model)
        try:
            plain()
        finally:
            remove()
        kept.clear()

    def per_batch() -> None:
        captured(RunState, specs, model, xs)

    def library() -> None:
        analyze_model(model, xs)

    inside: dict[str, float] = {"std ratio": 0.0, "mask stats": 0.0}

    def moments(t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        m = sample_moments(t)
        sync()
        inside["std ratio"] += time.perf_counter() - t0
        return m

    def std_ratio_only() -> None:
        # the capture with only the std ratio's moments taken (what the statistics' half costs)
        kept: list[torch.Tensor] = []
        with torch.inference_mode(), MaskCapture(
                model, specs, lambda call: kept.append(moments(call.out)),
                on_enter=lambda spec, x: moments(x)):
            for x in xs:
                model(x)

    def masks_only() -> None:
        # the capture with only the masks' statistics
        accs: dict[tuple[str, str], MaskAccumulator] = {}

        def fold(call: BlockCall) -> None:
            t0 = time.perf_counter()
            for name, mask in call.masks.items():
                accs.setdefault((call.spec.name, name), MaskAccumulator()).update(mask)
            sync()
            inside["mask stats"] += time.perf_counter() - t0

        with torch.inference_mode(), MaskCapture(model, specs, fold):
            for x in xs:
                model(x)

    variants: dict[str, Callable[[], None]] = {"plain": plain, "hooks": hooks,
                                               "per-batch": per_batch, "library": library}
    if args.parts:
        variants.update({"std ratio": std_ratio_only, "mask stats": masks_only})
    if importlib.util.find_spec("torchinfo") is not None:
        from torchinfo import summary

        variants["torchinfo"] = lambda: summary(model, input_data=[xs[0]], verbose=0,
                                                device=dev)
    if importlib.util.find_spec("torchlens") is not None:
        import torchlens

        variants["torchlens"] = lambda: [torchlens.log_forward_pass(model, x) for x in xs]
    plain()  # warm-up
    per_batch()
    series = {name: Series() for name in variants}
    for _ in range(args.runs):
        for name, fn in variants.items():
            series[name].add(*timed2(fn, sync))
    print(f"in one process, {threads} thread(s): {len(specs)} blocks, {args.batches} batches of "
          f"{tuple(xs[0].shape)} {dtype} on {dev}, {args.runs} interleaved runs")
    for name, s in series.items():
        print(ratio_line(name, s, series["plain"]))
    if args.parts:
        # time spent inside the statistics' own calls: a floor of what they add, whatever the
        # machine's load does to the ratios
        plain_total = sum(series["plain"].times)
        print("  inside the statistics' calls, over the runs: " + ", ".join(
            f"{name} {100 * t / plain_total:.1f} %" for name, t in inside.items())
            + " of the plain forward passes' time")
    missing = [n for n in ("torchinfo", "torchlens") if n not in variants]
    if missing:
        print(f"  ({', '.join(missing)} not installed: skipped)")
    if threads == 1:
        phases(model, xs, specs, sync)
    if args.mem_batches:
        memory(model, specs, xs[0], args.mem_batches, sync)
    return series


PHASES: dict[str, list[float]] = {}
ACTIVATIONS: list[str] = []
#: the discovery pass over the first batch's first samples: a plain forward of them, the traced
#: pass, and the traced pass keeping the run's statistics (what `analyze_model` runs)
TRACE: dict[str, list[float]] = {"plain": [], "traced": [], "keeping": []}


def phases(model: torch.nn.Module, xs: list[torch.Tensor], specs: Any,
           sync: Callable[[], None]) -> None:
    """Discovery, the memory probe and the report's freezing and rendering, timed alone."""
    from coordatt_diag.health.thresholds import ThresholdConfig
    from coordatt_diag.reports.json_report import report_json
    from coordatt_diag.reports.terminal import make_console, render
    from coordatt_diag.results import CheckpointInfo, InputsInfo

    head = xs[0][:DISCOVERY_BATCH]  # the first batch's samples the discovery pass runs
    for _ in range(5):
        with torch.inference_mode():
            PHASES.setdefault("discovery alone (traced pass)", []).append(
                timed(lambda: discover_blocks(model, xs[0][:2]), sync))
        with torch.inference_mode():
            TRACE["plain"].append(timed(lambda: model(head), sync))
            TRACE["traced"].append(timed(lambda: trace_blocks(model, head), sync))
            TRACE["keeping"].append(timed(
                lambda: trace_blocks(model, head, moments=sample_moments), sync))
        PHASES.setdefault("memory probe (1 sample)", []).append(
            timed(lambda: measure_activations(model, xs[0][:1]), sync))
        state = RunState(blocks=specs)
        with torch.inference_mode(), state.capture(model):
            model(xs[0])
        info = InputsInfo(source="synthetic", path=None, samples=8, batches=1, batch_size=8,
                          shape=list(xs[0].shape[1:]))

        def render_all(state: RunState = state, info: InputsInfo = info) -> None:
            report = finalize(model, state, ThresholdConfig(),
                              CheckpointInfo(path=None, sha256=None, format="in-memory"), info)
            with open(os.devnull, "w") as null:
                render(report, make_console(null))
            report_json(report)

        PHASES.setdefault("rendering (freeze, terminal, JSON)", []).append(
            timed(render_all, sync))
    # the memory pre-check's two figures: the exact peak and the discovery pass's upper bound
    with torch.inference_mode():
        traced = trace_blocks(model, xs[0][:2])
    peak = measure_activations(model, xs[0][:1])
    ACTIVATIONS.append(f"activations per sample: {peak / 2**20:.1f} MiB measured, "
                       f"{traced.allocated / traced.samples / 2**20:.1f} MiB by the discovery "
                       f"pass's bound ({traced.allocated / traced.samples / peak:.1f}x)")


def memory(model: torch.nn.Module, specs: Any, x: torch.Tensor, n: int,
           sync: Callable[[], None]) -> None:
    state = RunState(blocks=specs)
    gc.collect()
    rss = []
    with torch.inference_mode(), state.capture(model):
        for _ in range(n):
            model(x)
            sync()
            rss.append(trimmed_rss_mib())
    if n < 3:  # nothing to compare
        print(f"memory: RSS {', '.join(f'{r:.0f}' for r in rss)} MiB after each of {n} captured "
              "batches (3 or more compare two windows)")
        return
    # a few warm-up batches (5 from 15 batches on), then two windows of the rest
    warm = min(5, n // 3)
    half = warm + (n - warm) // 2
    first, second = max(rss[warm:half]), max(rss[half:])
    print(f"memory: RSS {rss[warm - 1]:.0f} MiB after {warm} captured batches, at most "
          f"{first:.0f} MiB over batches {warm + 1}-{half}, at most {second:.0f} MiB over "
          f"{half + 1}-{n} ({second - first:+.0f} MiB)")


PLAIN_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {here!r})
from models import {factory}
torch.manual_seed({seed})
model = {factory}()
model.load_state_dict(torch.load({ckpt!r}, map_location="cpu", weights_only=True))
model.eval()
gen = torch.Generator().manual_seed({seed})
with torch.inference_mode():
    for _ in range({batches}):
        model(torch.randn({bs}, 3, {imgsz}, {imgsz}, generator=gen))
"""

#: imports beyond torch and the parsing of the inspect command line (typer converts each
#: option there; typer 0.29 builds a pydantic validator per option at that point), in the
#: inspect command's order (`_load_torch` freezes torch's objects before the package's imports)
IMPORTS = ("import time; import torch; t1, c1 = time.perf_counter(), time.process_time(); "
           "import typer.main; from coordatt_diag.cli import _load_torch, app; _load_torch(); "
           "import coordatt_diag.runs.inspect, coordatt_diag.load.checkpoint, "
           "coordatt_diag.load.inputs, coordatt_diag.reports.terminal, "
           "coordatt_diag.reports.json_report, coordatt_diag.stats.monitor; "
           "group = typer.main.get_command(app); ctx = group.make_context('coordatt-diag', {argv!r}); "
           "group.get_command(ctx, 'inspect').make_context('inspect', {argv!r}[1:], parent=ctx); "
           "print(time.perf_counter() - t1, time.process_time() - c1)")


def whole_process(args: argparse.Namespace) -> None:
    build, factory, default = MODELS[args.model]
    imgsz = args.imgsz or default
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.manual_seed(0)
        torch.save(build().state_dict(), ckpt)
        plain_code = PLAIN_SCRIPT.format(here=str(HERE), factory=factory, seed=args.seed,
                                         ckpt=str(ckpt), batches=args.batches,
                                         bs=args.batch_size, imgsz=imgsz)
        mark = Path(tmp) / "mark"
        cli = [sys.executable, "-m", "coordatt_diag", "inspect", str(ckpt), "--path", str(HERE),
               "--model", f"models:{factory}", "--synthetic", "--seed", str(args.seed),
               "--batches", str(args.batches), "--batch-size", str(args.batch_size),
               "--imgsz", str(imgsz), "--device", "cpu", "--json", str(Path(tmp) / "r.json")]
        # the same two with an exit handler, registered first so that it runs last, that marks
        # when the work (and every other exit handler) is done: what follows is the exit alone
        marker = ("import atexit, sys, time\n"
                  f"atexit.register(lambda: open({str(mark)!r}, 'w').write(repr(time.time())))\n")
        cli_marked = [sys.executable, "-c", marker + f"sys.argv = {['coordatt-diag', *cli[3:]]!r}\n"
                      "from coordatt_diag.cli import main\nmain()\n"]
        plain_marked = [sys.executable, "-c", marker + plain_code]

        def run(cmd: list[str], exits: list[float]) -> tuple[float, float]:
            """Wall seconds and the child's CPU seconds (user + system); its exit to `exits`."""
            mark.unlink(missing_ok=True)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            wall, end = time.perf_counter() - t0, time.time()
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise SystemExit(f"{cmd[:4]} exited {proc.returncode}")
            exits.append(end - float(mark.read_text()))
            return wall, usage.ru_utime + usage.ru_stime

        exits: dict[str, list[float]] = {"plain": [], "inspect": []}
        run(plain_marked, [])  # warm the page cache
        plain, inspect, imports = Series(), Series(), Series()
        for _ in range(args.runs):
            plain.add(*run(plain_marked, exits["plain"]))
            inspect.add(*run(cli_marked, exits["inspect"]))
            out = subprocess.run([sys.executable, "-c", IMPORTS.format(argv=cli[3:])], env=env,
                                 check=True,
                                 capture_output=True, text=True).stdout.split()
            imports.add(float(out[0]), float(out[1]))
    print(f"whole process, 1 thread: `coordatt-diag inspect` ({args.batches} synthetic "
          f"batches of {args.batch_size}x3x{imgsz}x{imgsz}, --json) vs a script loading the "
          f"checkpoint and running the same forwards, {args.runs} interleaved runs")
    print(ratio_line("script", plain, plain))
    print(ratio_line("inspect", inspect, plain))
    print("phases of the whole process's extra time (median; the exit is the process's end "
          "after its work, compared with the script's):")
    print(f"  imports beyond torch          {statistics.median(imports.times):7.3f} s  "
          f"(CPU {statistics.median(imports.cpu):.3f} s; load {min(imports.loads):.2f}-"
          f"{max(imports.loads):.2f})")
    e_cli, e_plain = statistics.median(exits["inspect"]), statistics.median(exits["plain"])
    print(f"  exit                          {e_cli - e_plain:+7.3f} s  (inspect {e_cli:.3f} s, "
          f"script {e_plain:.3f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="mobilenetv2")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=0, help="0: 224 for mobilenetv2, 640 for yolo")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--process", action="store_true", help="also the whole process")
    ap.add_argument("--parts", action="store_true",
                    help="also the capture with only the std ratio, and with only the masks' "
                         "statistics")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="float16 model (CUDA)")
    ap.add_argument("--mem-batches", type=int, default=0)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    per_batch_extra: list[float] = []
    fixed_extra: list[float] = []
    for threads in [int(t) for t in args.threads.split(",") if t]:
        series = in_process(args, threads)
        if threads == 1:
            per_batch_extra = [p - b for p, b in zip(series["per-batch"].times,
                                                     series["plain"].times, strict=True)]
            fixed_extra = [a - p for a, p in zip(series["library"].times,
                                                 series["per-batch"].times, strict=True)]
    if PHASES or per_batch_extra:
        print("phases in one process, 1 thread (median):")
        if per_batch_extra:
            print(f"  per-batch statistics          {statistics.median(per_batch_extra):+7.3f} s "
                  f"over {args.batches} batches (per-batch minus plain)")
            print(f"  fixed costs of the library    {statistics.median(fixed_extra):+7.3f} s "
                  "(library minus per-batch: discovery on the first batch, the memory check, "
                  "judging)")
        for name, times in PHASES.items():
            print(f"  {name:<30}{statistics.median(times):7.3f} s")
        if TRACE["plain"]:
            ratio = {k: statistics.median(t / p for t, p in zip(v, TRACE["plain"], strict=True))
                     for k, v in TRACE.items()}
            print(f"  discovery pass over {DISCOVERY_BATCH} samples: traced {ratio['traced']:.2f}x, "
                  f"keeping the run's statistics {ratio['keeping']:.2f}x a plain forward of them "
                  f"({statistics.median(TRACE['plain']):.3f} s)")
        for line in ACTIVATIONS:
            print(f"  {line}")
    if args.process:
        whole_process(args)
    print(json.dumps({"load_at_end": os.getloadavg()}))


if __name__ == "__main__":
    main()
