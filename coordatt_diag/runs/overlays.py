"""Mask overlays for the report pages: a few input samples with each block's map laid over them.

The statistics of a run never keep the masks (`coordatt_diag.stats.masks` reduces each batch). For the
overlays `inspect_with_overlays` keeps the first N input samples of the run (N is small: 4 by
default) and, once the statistics are done, runs one short extra pass over those samples with its
own `MaskCapture` callback (`OverlayCollector`). The collector keeps one channel-averaged map per
block and sample, at the block's feature resolution; the renderers upsample it to the image.

Which map a block shows:

* coordinate attention (a_h and a_w): the full map a_h (x) a_w, i.e. mean_c a_h[c, h] * a_w[c, w];
* a full coordinate map a_hw: its channel mean;
* CBAM and spatial attention: the spatial map;
* channel-only blocks (SE): none (their mask has no position).

The samples are de-normalised for display: ImageNet-normalised images get the ImageNet mean and
std back, `unit` images are clipped to [0, 1], tensors and synthetic inputs (used as given) are
stretched per sample from their 1st to their 99th percentile.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coordatt_diag.errors import UsageError, opt

if TYPE_CHECKING:
    import torch
    from torch import nn

    from coordatt_diag.capture.engine import BlockCall, BlockSpec
    from coordatt_diag.results import Report
    from coordatt_diag.runs.inspect import InspectOptions, Progress

#: Longest side of a sample image kept for display (pixels).
DISPLAY_SIDE = 256

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BlockOverlay:
    """One block's map for each overlay sample.

    Attributes:
        block: the block's name as in `named_modules()`.
        source: which map it is: "a_h ⊗ a_w", "a_h", "a_w", "a_hw" or "spatial".
        maps: one (h, w) float32 array per sample at the block's feature resolution (an axis
            mask alone is (H, 1) or (1, W)), values in [0, 1].
    """

    block: str
    source: str
    maps: list[np.ndarray]


@dataclass(frozen=True)
class Overlays:
    """The overlay data of a run.

    Attributes:
        images: the input samples for display: (H, W, 3) RGB or (H, W) grey float32 in [0, 1].
        blocks: block name -> its maps (blocks without a positional mask are absent).
        display: how the samples were turned into images (shown under the overlays).
    """

    images: list[np.ndarray]
    blocks: dict[str, BlockOverlay] = field(default_factory=dict)
    display: str = ""


def block_map(masks: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor] | None:
    """The channel-averaged (B, h, w) map a block shows in the overlays, or None.

    Args:
        masks: the block's masks in canonical layout (see `capture.canonical`).

    Returns:
        (source, map), or None for a block whose masks have no position (SE).
    """
    import torch

    first: dict[str, torch.Tensor] = {}
    for name, m in masks.items():
        first.setdefault(name.split("#")[0], m)
    a_h, a_w = first.get("a_h"), first.get("a_w")
    if a_h is not None and a_w is not None:
        c = a_h.shape[1]
        # mean over channels of the outer product, without building (B, C, H, W)
        full = torch.einsum("bch,bcw->bhw", a_h[..., 0].float(), a_w[:, :, 0, :].float()) / c
        return "a_h ⊗ a_w", full
    if "a_hw" in first:
        return "a_hw", first["a_hw"].float().mean(1)
    if "spatial" in first:
        return "spatial", first["spatial"].float()[:, 0]
    if a_h is not None:
        return "a_h", a_h.float().mean(1)
    if a_w is not None:
        return "a_w", a_w.float().mean(1)
    return None


class OverlayCollector:
    """A `MaskCapture` callback that keeps each block's channel-averaged map of its first call."""

    def __init__(self) -> None:
        self.blocks: dict[str, BlockOverlay] = {}

    def on_block(self, call: BlockCall) -> None:
        name = call.spec.name
        if name in self.blocks:  # a block called twice in one forward pass: keep the first call
            return
        picked = block_map(call.masks)
        if picked is None:
            return
        source, maps = picked
        arr = maps.detach().float().cpu().numpy()
        self.blocks[name] = BlockOverlay(block=name, source=source,
                                         maps=[np.ascontiguousarray(a) for a in arr])


def collect_overlays(model: nn.Module, blocks: list[BlockSpec], samples: torch.Tensor,
                     device: torch.device | str | None = None) -> dict[str, BlockOverlay]:
    """Run `samples` through `model` once and keep each block's overlay maps.

    Args:
        model: the model (its train/eval flags are restored afterwards).
        blocks: the blocks to watch (from `analysis.find_blocks` or a `RunState`).
        samples: a small batch (N, C, H, W).
        device: where to run (default: where the model is).

    Returns:
        Block name -> its maps, for the blocks that have a positional mask.
    """
    import torch

    from coordatt_diag.capture.engine import MaskCapture
    from coordatt_diag.runs.inspect import model_dtype

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    collector = OverlayCollector()
    with torch.inference_mode(), MaskCapture(model, blocks, collector.on_block):
        model(samples.to(device, dtype=model_dtype(model)))
    return collector.blocks


def display_images(samples: torch.Tensor, source: str, normalize: str | None) -> tuple[
        list[np.ndarray], str]:
    """The samples as images for display, and a line saying how they were made.

    Args:
        samples: (N, C, H, W) as the model saw them.
        source: "images", "tensors" or "synthetic" (`InputsInfo.source`).
        normalize: "unit" or "imagenet" for images.

    Returns:
        (images, description): (H, W, 3) or (H, W) float32 arrays in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    x = samples.detach().float().cpu()
    h, w = x.shape[-2:]
    scale = DISPLAY_SIDE / max(h, w)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    c = x.shape[1]
    if source == "images" and normalize == "imagenet":
        mean = torch.tensor(_IMAGENET_MEAN if c == 3 else [float(np.mean(_IMAGENET_MEAN))] * c)
        std = torch.tensor(_IMAGENET_STD if c == 3 else [float(np.mean(_IMAGENET_STD))] * c)
        x = (x * std[:, None, None] + mean[:, None, None]).clamp(0, 1)
        how = "the input images, ImageNet normalisation undone"
    elif source == "images":
        x = x.clamp(0, 1)
        how = "the input images"
    else:
        flat = x.flatten(1)
        lo = flat.quantile(0.01, dim=1)[:, None, None, None]
        hi = flat.quantile(0.99, dim=1)[:, None, None, None]
        x = ((x - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)
        how = (f"the {source} inputs as given to the model, each stretched from its 1st to its "
               "99th percentile")
    if c in (3, 4):
        arr = x[:, :3].permute(0, 2, 3, 1)
    else:
        arr = x.mean(1)  # grey (1 channel, or a channel count no image has)
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arr.numpy()], how


class _FirstSamples:
    """Passes batches through and keeps a copy of the first `n` samples."""

    def __init__(self, batches: Iterable[torch.Tensor], n: int) -> None:
        self._batches = batches
        self.n = n
        self.parts: list[torch.Tensor] = []
        self.kept = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self._batches:
            if self.kept < self.n:
                part = batch[: self.n - self.kept].detach().to("cpu", copy=True)
                self.parts.append(part)
                self.kept += int(part.shape[0])
            yield batch

    def samples(self) -> torch.Tensor | None:
        import torch

        return torch.cat(self.parts) if self.parts else None


def inspect_with_overlays(
    path: Path,
    options: InspectOptions | None = None,
    overlays: int = 4,
    progress: Progress | None = None,
    effect_progress: Progress | None = None,
) -> tuple[Report, Overlays | None]:
    """`inspect_checkpoint` plus the overlay maps of the first `overlays` samples.

    Args:
        path: the checkpoint.
        options: the `inspect` options (with `effect`, the mask effect is measured as well).
        overlays: number of samples to show (0: no overlays, the run is exactly `inspect`'s).
        progress: called with the number of batches done.
        effect_progress: called with the number of batches the mask effect has done.

    Returns:
        The report, and the overlays (None when `overlays` is 0).
    """
    from coordatt_diag.runs.inspect import InspectOptions, _inspect, inspect_checkpoint

    if overlays < 0:
        raise UsageError(f"{opt('overlays')} must be 0 or more")
    opts = options or InspectOptions()
    if overlays == 0:
        return inspect_checkpoint(path, opts, progress, effect_progress), None

    # inspect's own run, keeping the first samples of its batch stream
    first: _FirstSamples | None = None

    def keep_first(batches: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
        nonlocal first
        first = _FirstSamples(batches, overlays)
        return first

    done = _inspect(path, opts, progress, effect_progress, watch_batches=keep_first)
    report = done.report
    samples = first.samples() if first is not None else None
    if samples is None:
        return report, None
    maps = collect_overlays(done.model, done.blocks, samples, done.device)
    info = report.inputs
    images, how = display_images(samples, info.source, info.normalize)
    return report, Overlays(images=images, blocks=maps, display=how)
