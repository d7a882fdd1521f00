"""What watching the masks costs: a plain forward pass vs the same pass under `inspect`'s capture.

The model is a MobileNetV2 with a Coordinate Attention block in every inverted residual (after the
depthwise convolution, as in the CoordAtt paper's ImageNet model), random weights. Batches of
8x3x224x224 on the CPU by default.

Measured:
* time per batch of a plain `torch.inference_mode` forward pass and of the same pass under
  `MaskCapture` with the streaming accumulators (what `inspect` runs per batch), interleaved,
  median of several runs, and their ratio (target <= 1.15);
* resident memory after 5 and after 50 hooked batches (flat: the statistics do not keep masks).

Usage:
    python benchmarks/overhead.py [--runs 7] [--batch-size 8] [--imgsz 224] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coordatt_diag.analysis import RunState
from coordatt_diag.capture import discover_blocks


class HSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0) / 6.0


class CoordAtt(nn.Module):
    """Coordinate Attention (Hou et al., CVPR 2021), as in the paper's reference code."""

    def __init__(self, c: int, reduction: int = 32) -> None:
        super().__init__()
        mid = max(8, c // reduction)
        self.conv1 = nn.Conv2d(c, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mid, c, 1)
        self.conv_w = nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x_h = x.mean(3, keepdim=True)
        x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()
        a_w = self.conv_w(y_w.permute(0, 1, 3, 2)).sigmoid()
        return x * a_h * a_w


def _conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), CoordAtt(hidden),
                   _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2_coordatt(num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 with CoordAtt in each of its 17 inverted residuals."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
    cin = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(_conv_bn(cin, 1280, 1, 1))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))


def rss_mib() -> float:
    """Current resident memory of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = mobilenet_v2_coordatt().to(dev).eval()
    x = torch.randn(args.batch_size, 3, args.imgsz, args.imgsz, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    with torch.inference_mode():
        specs = discover_blocks(model, x[:2])
        print(f"model: MobileNetV2 + CoordAtt, {len(specs)} blocks found, "
              f"input {tuple(x.shape)} on {dev}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
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
        print(f"ratio         : {h / p:.3f} wall, {hc / pc:.3f} CPU time  (target <= 1.15)")

        state = RunState(blocks=specs)
        gc.collect()
        with state.capture(model):
            for i in range(50):
                model(x)
                if i == 4:
                    sync()
                    gc.collect()
                    after5 = rss_mib()
            sync()
            gc.collect()
            after50 = rss_mib()
        print(f"memory        : RSS {after5:.0f} MiB after 5 hooked batches, "
              f"{after50:.0f} MiB after 50 ({after50 - after5:+.0f} MiB)")
        if dev.type == "cuda":
            print(f"cuda peak     : {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated")


if __name__ == "__main__":
    main()
