"""What watching the masks costs: a plain forward pass vs the same pass under `inspect`'s capture.

Models (`benchmarks/models.py`, random weights): `mobilenetv2`, a MobileNetV2 with a Coordinate
Attention block in every inverted residual (the CoordAtt paper's ImageNet model), batches of
8x3x224x224; `yolo`, a YOLOv8n-sized detector with 7 CoordAtt blocks, batches of 8x3x640x640.

Measured:
* time per batch of a plain `torch.inference_mode` forward pass and of the same pass under
  `MaskCapture` with the streaming accumulators (what `inspect` runs per batch), interleaved,
  median of several runs, and their ratio (target <= 1.15);
* resident memory over --mem-batches hooked batches, read after each batch once glibc has
  returned its free pages (`malloc_trim`; without it RSS wanders by tens of MiB between batches
  whatever the program holds): after 5, the most over the first and over the second half (flat:
  the statistics do not keep masks), and the activation memory per sample that `inspect`'s
  pre-check measures;
* on CUDA, the allocator's peak.

Usage:
    python benchmarks/overhead.py [--model mobilenetv2|yolo] [--runs 7] [--batch-size 8]
        [--imgsz 224|640] [--device cpu|cuda] [--half] [--threads N] [--mem-batches 50]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

from coordatt_diag.capture.engine import discover_blocks
from coordatt_diag.load.memory import measure_activations
from coordatt_diag.runs.inspect import RunState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import mobilenet_v2_coordatt, yolo_coordatt  # noqa: E402


def trimmed_rss_mib() -> float:
    """Resident memory after returning the allocator's free pages to the system (glibc's
    malloc_trim): what is really held, without the tens of MiB glibc keeps between batches."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_mib()


def rss_mib() -> float:
    """Current resident memory of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mobilenetv2", "yolo"], default="mobilenetv2")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=0, help="0: 224 for mobilenetv2, 640 for yolo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="float16 model (CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--mem-batches", type=int, default=50)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = torch.float16 if args.half else torch.float32
    torch.manual_seed(0)
    build, name = ((mobilenet_v2_coordatt, "MobileNetV2 + CoordAtt") if args.model == "mobilenetv2"
                   else (yolo_coordatt, "YOLOv8n-sized detector + CoordAtt"))
    imgsz = args.imgsz or (224 if args.model == "mobilenetv2" else 640)
    model = build().to(dev, dtype).eval()
    x = torch.randn(args.batch_size, 3, imgsz, imgsz, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    with torch.inference_mode():
        specs = discover_blocks(model, x[:2])
        print(f"model: {name}, {len(specs)} blocks found, input {tuple(x.shape)} {dtype} on "
              f"{dev}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        per_sample = measure_activations(model, x[:2])
        print(f"activations   : {per_sample / 2**20:.1f} MiB per sample (inspect's pre-check), "
              f"{per_sample * args.batch_size / 2**20:.0f} MiB per batch")
        for _ in range(2):  # warm-up
            model(x)
        plain, hooked, plain_cpu, hooked_cpu = [], [], [], []
        state = RunState(blocks=specs)
        for _ in range(args.runs):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            model(x)
            sync()
            plain.append(time.perf_counter() - t0)
            plain_cpu.append(time.process_time() - c0)
            with state.capture(model):
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                model(x)
                sync()
                hooked.append(time.perf_counter() - t0)
                hooked_cpu.append(time.process_time() - c0)
        p, h = statistics.median(plain), statistics.median(hooked)
        pc, hc = statistics.median(plain_cpu), statistics.median(hooked_cpu)
        print(f"plain forward : median {p * 1e3:8.1f} ms/batch wall, {pc * 1e3:8.1f} ms CPU "
              f"over {args.runs} runs")
        print(f"under capture : median {h * 1e3:8.1f} ms/batch wall, {hc * 1e3:8.1f} ms CPU")
        target = 1.10 if dev.type == "cuda" else 1.15
        print(f"ratio         : {h / p:.3f} wall, {hc / pc:.3f} CPU time  (target <= {target})")

        state = RunState(blocks=specs)
        gc.collect()
        rss = []
        with state.capture(model):
            for _ in range(args.mem_batches):
                model(x)
                sync()
                rss.append(trimmed_rss_mib())
        half = len(rss) // 2
        first, second = max(rss[5:half] or rss[:1]), max(rss[half:])
        print(f"memory        : RSS {rss[4]:.0f} MiB after 5 hooked batches, at most {first:.0f} MiB "
              f"over batches 6-{half}, at most {second:.0f} MiB over batches {half + 1}-{len(rss)} "
              f"({second - first:+.0f} MiB), {rss[-1]:.0f} MiB after {len(rss)} (glibc free pages "
              "returned before each reading)")
        if dev.type == "cuda":
            print(f"cuda peak     : {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated")


if __name__ == "__main__":
    main()
