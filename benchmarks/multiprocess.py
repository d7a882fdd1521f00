"""One process vs `torchrun --nproc-per-node N`: wall time of `coordatt-diag inspect`, same report.

Writes the YOLOv8n-sized CoordAtt detector (`benchmarks/models.py`, random weights) as a state
dict and a tensor file of inputs into a temporary folder, then runs

    coordatt-diag inspect net.pt --path benchmarks --model models:yolo_coordatt --tensors x.pt
    torchrun --standalone --nproc-per-node N -m coordatt_diag inspect ...   (same arguments)

and prints the wall time of each (process start, model load and the run) and whether the reports
agree (every statistic to 1e-6 relative). On a CPU each of the N processes gets cores/N threads.

Usage:
    python benchmarks/multiprocess.py [--procs 2] [--samples 32] [--batch-size 4] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import yolo_coordatt  # noqa: E402


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        # a finding's message prints its value to 4 digits: compare the value, not the text
        return set(a) == set(b) and all(_close(a[k], b[k]) for k in a
                                        if k not in ("tool", "message"))
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a))
    return bool(a == b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        torch.manual_seed(0)
        torch.save(yolo_coordatt().state_dict(), d / "net.pt")
        torch.save(torch.rand(args.samples, 3, args.imgsz, args.imgsz), d / "x.pt")
        common = [str(d / "net.pt"), "--path", str(HERE), "--model", "models:yolo_coordatt",
                  "--tensors", str(d / "x.pt"), "--batch-size", str(args.batch_size),
                  "--device", "cpu"]
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        runs = {
            "1 process": ([sys.executable, "-m", "coordatt_diag", "inspect", *common, "--json",
                           str(d / "one.json")], {"OMP_NUM_THREADS": str(cores)}),
            f"torchrun x{args.procs}": (
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={args.procs}", "-m", "coordatt_diag", "inspect", *common,
                 "--json", str(d / "many.json")],
                {"OMP_NUM_THREADS": str(max(1, cores // args.procs))}),
        }
        print(f"{args.samples} samples of 3x{args.imgsz}x{args.imgsz} in batches of "
              f"{args.batch_size}, {cores} CPU cores, torch {torch.__version__}")
        for label, (cmd, extra) in runs.items():
            t0 = time.perf_counter()
            res = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                sys.exit(f"{label} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
            print(f"{label:12s}: {wall:7.1f} s wall ({extra['OMP_NUM_THREADS']} threads each)")
        one = json.loads((d / "one.json").read_text())
        many = json.loads((d / "many.json").read_text())
        print(f"reports agree : {_close(one, many)} ({len(one['blocks'])} blocks, "
              f"processes {one['tool']['processes']} vs {many['tool']['processes']})")


if __name__ == "__main__":
    main()
