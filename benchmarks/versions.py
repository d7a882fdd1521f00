"""Two versions of the package in one process, interleaved: the steadiest before/after figure.

    python benchmarks/versions.py --old ../previous-checkout [--threads 1] [--runs 9] [--batches 6]

The older checkout's `coordatt_diag` is copied into a temporary folder as `coordatt_diag_old`
(every import of it renamed) and removed at the end. Each repetition runs, in turn, the plain
forward passes, the per-batch path (capture and accumulators, blocks known) and `analyze_model`
of each version on MobileNetV2 + 17 CoordAtt blocks; each figure is a ratio to the plain passes
of the same repetition (wall and CPU time), min / median / max over the repetitions, with the
load average beside each variant. Both versions see the same machine at the same moments, so their
difference is not the machine's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def copy_renamed(old_root: Path, dest: Path) -> None:
    src = old_root / "coordatt_diag"
    if not (src / "__init__.py").is_file():
        raise SystemExit(f"error: no coordatt_diag package in {old_root}: pass --old CHECKOUT")
    target = dest / "coordatt_diag_old"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pattern = re.compile(r"\bcoordatt_diag\b")
    for path in target.rglob("*.py"):
        path.write_text(pattern.sub("coordatt_diag_old", path.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the older checkout's root folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--batches", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="versions-") as tmp:
        copy_renamed(args.old.resolve(), Path(tmp))
        sys.path[:0] = [str(ROOT), str(HERE), tmp]
        run(args)


def run(args: argparse.Namespace) -> None:
    import coordatt_diag_old  # type: ignore[import-not-found]
    import torch
    from coordatt_diag_old.capture.engine import (  # type: ignore[import-not-found]
        discover_blocks as discover_old,
    )
    from coordatt_diag_old.runs.inspect import (  # type: ignore[import-not-found]
        RunState as StateOld,
    )
    from models import mobilenet_v2_coordatt
    from overhead import Series, captured, forwards, ratio_line, timed2

    import coordatt_diag
    from coordatt_diag.capture.engine import discover_blocks as discover_new
    from coordatt_diag.runs.inspect import RunState as StateNew

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mobilenet_v2_coordatt().eval()
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(args.batches)]
    with torch.inference_mode():
        specs_new, specs_old = discover_new(model, xs[0][:2]), discover_old(model, xs[0][:2])

    variants: dict[str, Callable[[], None]] = {
        "plain": lambda: forwards(model, xs),
        "per-batch, this version": lambda: captured(StateNew, specs_new, model, xs),
        "per-batch, old version": lambda: captured(StateOld, specs_old, model, xs),
        "analyze_model, this version": lambda: coordatt_diag.analyze_model(model, xs),
        "analyze_model, old version": lambda: coordatt_diag_old.analyze_model(model, xs),
    }
    for fn in variants.values():  # warm-up
        fn()
    series = {name: Series() for name in variants}
    for _ in range(args.runs):
        for name, fn in variants.items():
            series[name].add(*timed2(fn, lambda: None))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(specs_new)} blocks, "
          f"{args.batches} batches of 8x3x224x224, {args.runs} interleaved runs")
    for name, s in series.items():
        print(ratio_line(name, s, series["plain"], width=28))


if __name__ == "__main__":
    main()
