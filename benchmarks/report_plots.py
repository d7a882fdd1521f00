"""How long `coordatt-diag report` takes to draw and write a report for a big model.

The model is a YOLO-sized stack of 50 attention blocks with random weights (30 Coordinate
Attention, 10 CBAM, 10 SE, alternating, at strides 1 to 8 of a 128x128 input), analysed on two
batches of 4 smooth random images; then the report folder (index.html, report.md, report.json, every figure:
summary, per-block histograms, axis profiles and overlays, the overlay grid) is written with
`write_report_folder`, which is what is timed: wall clock and CPU time, median of several runs.
The analysis itself is not part of the figure (see `benchmarks/overhead.py`).

Usage:
    python benchmarks/report_plots.py [--blocks 50] [--runs 3] [--overlays 4] [--format png]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coordatt_diag.reports.folder import write_report_folder
from coordatt_diag.runs.inspect import analyze_model, run_batches
from coordatt_diag.runs.overlays import Overlays, collect_overlays, display_images


class CoordAtt(nn.Module):
    """Coordinate Attention (Hou et al., CVPR 2021), as in the paper's reference code."""

    def __init__(self, c: int, mid: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, mid, 1)
        self.conv_h = nn.Conv2d(mid, c, 1)
        self.conv_w = nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        y = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).permute(0, 1, 3, 2)], 2)
        y = F.hardswish(self.conv1(y))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        return x * self.conv_h(y_h).sigmoid() * self.conv_w(y_w.permute(0, 1, 3, 2)).sigmoid()


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class Spatial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.channel = SE(c)
        self.spatial = Spatial()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class Stage(nn.Module):
    """conv + attention, like a YOLO C2f with an attention module appended."""

    def __init__(self, c_in: int, c: int, stride: int, att: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c, 3, stride=stride, padding=1)
        self.att = att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.att(F.silu(self.conv(x)))


def big_model(n_blocks: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c_in, c = 3, 16
    for i in range(n_blocks):
        stride = 2 if i in (1, n_blocks // 4, n_blocks // 2) else 1
        c_next = min(c * 2, 64) if stride == 2 else c
        att: nn.Module = (CoordAtt(c_next) if i % 5 in (0, 1, 3)
                          else CBAM(c_next) if i % 5 == 2 else SE(c_next))
        layers.append(Stage(c_in, c_next, stride, att))
        c_in, c = c_next, c_next
    return nn.Sequential(*layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--overlays", type=int, default=4)
    ap.add_argument("--format", default="png", choices=("png", "svg"))
    args = ap.parse_args()

    model = big_model(args.blocks).eval()
    gen = torch.Generator().manual_seed(0)
    # smooth random images (a 16x16 field upsampled) with a little pixel noise: closer to
    # photographs than white noise, which no image format compresses
    batches = [(F.interpolate(torch.rand(4, 3, 16, 16, generator=gen), size=(128, 128),
                              mode="bicubic", align_corners=False)
                + 0.03 * torch.randn(4, 3, 128, 128, generator=gen)).clamp(0, 1)
               for _ in range(2)]
    report = analyze_model(model, batches)
    assert len(report.blocks) == args.blocks, [b.name for b in report.blocks]
    overlays = None
    if args.overlays:
        samples = batches[0][: args.overlays]
        specs = run_batches(model, [samples]).blocks
        images, how = display_images(samples, "synthetic", None)
        overlays = Overlays(images=images, blocks=collect_overlays(model, specs, samples),
                            display=how)

    walls, cpus = [], []
    files: list[str] = []
    html_size = 0
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            folder = write_report_folder(report, Path(tmp) / "diag", overlays, fmt=args.format)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            files = folder.files
            html_size = (folder.path / "index.html").stat().st_size
    plots = sum(f.startswith("plots/") for f in files)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(f"{args.blocks} blocks, {plots} {args.format} figures, overlays of "
          f"{args.overlays} samples, index.html {html_size / 1e6:.1f} MB")
    print(f"report folder written in {wall:.1f} s wall, {cpu:.1f} s CPU (median of {args.runs}; "
          f"{1000 * cpu / args.blocks:.0f} ms CPU per block; runs: "
          + ", ".join(f"{w:.1f}" for w in walls) + " s)")


if __name__ == "__main__":
    main()
