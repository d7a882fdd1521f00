"""Threads or processes for preparing images? Decode + letterbox N JPEGs at 640 both ways.

`inspect --images` decodes in a thread pool: Pillow releases the GIL while it decodes and
resizes, so threads run in parallel, and a decoded image (a float32 3x640x640 array, 4.7 MiB)
stays in the process instead of being pickled back from a worker process. This script measures
that choice: serial, a thread pool and process pools (fork, spawn) of the same size, on
generated photos-like JPEGs (640x480), after one warm-up pass each.

Usage:
    python benchmarks/decode_workers.py [--images 64] [--workers 2] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from coordatt_diag.load.inputs import decode_image


def _timed(pool: Executor, files: list[Path], imgsz: int) -> float:
    n = len(files)
    t0 = time.perf_counter()
    list(pool.map(decode_image, files, [3] * n, [imgsz] * n, ["unit"] * n, [True] * n))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.images):
            yy, xx = np.mgrid[0:480, 0:640]
            base = np.stack([(xx * (i + 1)) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(noisy).save(path, quality=90)
            files.append(path)
        for f in files[:4]:
            decode_image(f, 3, args.imgsz, "unit", True)
        t0 = time.perf_counter()
        for f in files:
            decode_image(f, 3, args.imgsz, "unit", True)
        serial = time.perf_counter() - t0
        print(f"{args.images} JPEGs 640x480 -> 3x{args.imgsz}x{args.imgsz} letterboxed, "
              f"{args.workers} workers")
        print(f"serial            : {serial * 1e3:7.0f} ms")
        pools: dict[str, Executor] = {
            "threads": ThreadPoolExecutor(args.workers),
            "processes (fork)": ProcessPoolExecutor(args.workers, mp_context=mp.get_context("fork")),
            "processes (spawn)": ProcessPoolExecutor(args.workers,
                                                     mp_context=mp.get_context("spawn")),
        }
        for label, pool in pools.items():
            with pool:
                _timed(pool, files, args.imgsz)  # warm-up: start the workers
                print(f"{label:18s}: {_timed(pool, files, args.imgsz) * 1e3:7.0f} ms")


if __name__ == "__main__":
    main()
