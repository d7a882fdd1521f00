"""Sample inputs: image files, saved tensors, or synthetic noise, batched for the model.

* `--images PATH`: a file or a folder (searched recursively) of jpg, png, bmp, webp, tif images;
  converted to the model's channel count (grayscale, RGB or RGBA), resized to `imgsz` x `imgsz`
  (stretched, or letterboxed as YOLO does), scaled to [0, 1] (`unit`) or ImageNet-normalised.
  Images are decoded by a small thread pool ahead of the model, so decoding does not stall the
  forward passes. Unreadable files are skipped and counted; none readable is an error.
* `--tensors FILE`: a `.pt` file holding a tensor (N, C, H, W) or a list of them (read with
  `weights_only=True`), or a `.npy` array; used as given.
* synthetic: standard normal batches (the default when no input is named); real images give a
  truer picture of the masks.

The image side defaults to 224, and to 640 for YOLO models, which also get letterboxed images
(as Ultralytics feeds them). A YOLO model only takes sides that are multiples of its grid
(the largest of `model.stride` and 32, as Ultralytics' `check_imgsz`), so an `--imgsz` that is
not is rounded up, with a note in the report.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coordatt_diag.errors import InputError, UsageError, one_line, opt, show_path
from coordatt_diag.results import InputsInfo, PathArg

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_IMGSZ = 224
YOLO_IMGSZ = 640
YOLO_MIN_GRID = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYNTHETIC_BATCHES = 4
SYNTHETIC_NOTE = ("synthetic standard-normal inputs: real images (--images) or tensors (--tensors) "
                  "give a truer picture of the masks")


def input_channels(model: nn.Module, default: int = 3) -> int:
    """The channel count the model's first convolution takes."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return int(m.in_channels)
    return default


@dataclass(frozen=True)
class InputSize:
    """The side the inputs get, whether images are letterboxed, and why (a note, or None)."""

    imgsz: int
    letterbox: bool = False
    note: str | None = None


def input_size(model: nn.Module | None, imgsz: int | None) -> InputSize:
    """The input side for `model`: `imgsz` (default 224), or for a YOLO model 640 by default,
    a multiple of its grid (rounded up), with letterboxed images.

    Args:
        model: the model to feed (None: no model-specific rule).
        imgsz: the side asked for (`--imgsz`), or None for the default.
    """
    from coordatt_diag.load.checkpoint import yolo_stride

    stride = yolo_stride(model) if model is not None else None
    if stride is None:
        return InputSize(imgsz if imgsz is not None else DEFAULT_IMGSZ)
    grid = max(stride, YOLO_MIN_GRID)
    asked = imgsz if imgsz is not None else YOLO_IMGSZ
    side = max(grid, -(-asked // grid) * grid)
    note = None
    if side != asked:
        note = f"--imgsz {asked} rounded up to {side}, a multiple of the YOLO model's stride {grid}"
    return InputSize(side, letterbox=True, note=note)


@dataclass
class InputStream:
    """Batches for the model, and what they were, counted as they are produced.

    Iterate `batches()` once; `info()` then describes what was run.
    """

    source: str
    path: str | None
    batch_size: int
    normalize: str | None
    note: str | None
    _iter: Iterator[torch.Tensor] | None = None
    samples: int = 0
    batches_run: int = 0
    skipped: int = 0
    shape: list[int] = field(default_factory=list)

    def batches(self) -> Iterator[torch.Tensor]:
        assert self._iter is not None
        for batch in self._iter:
            if not self.shape:
                self.shape = [int(s) for s in batch.shape[1:]]
            self.samples += int(batch.shape[0])
            self.batches_run += 1
            yield batch
        if self.samples == 0:
            if self.source == "images":
                raise InputError(
                    f"none of the {self.skipped} images under {self.path} could be read: "
                    "check the files (jpg, png, bmp, webp, tif)"
                )
            raise InputError(f"no samples in {self.path or self.source}")

    def info(self) -> InputsInfo:
        return InputsInfo(
            source=self.source, path=self.path, samples=self.samples, batches=self.batches_run,
            batch_size=self.batch_size, shape=self.shape, skipped=self.skipped,
            normalize=self.normalize, note=self.note,
        )


def open_inputs(
    *,
    images: PathArg | None = None,
    tensors: PathArg | None = None,
    channels: int = 3,
    imgsz: int | None = None,
    normalize: str = "unit",
    letterbox: bool = False,
    batch_size: int = 8,
    batches: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    model: nn.Module | None = None,
) -> InputStream:
    """Open the inputs named by the options (synthetic when none is named).

    Args:
        images: image file or folder.
        tensors: .pt or .npy file.
        channels: the model's input channel count.
        imgsz: side of the square images are resized to (and of synthetic inputs); default
            224, or as `input_size` decides for `model`.
        normalize: "unit" or "imagenet" (images only).
        letterbox: keep the aspect ratio and pad with grey (YOLO) instead of stretching (always
            for a YOLO `model`).
        batch_size: samples per batch.
        batches: stop after this many batches (default: all; 4 for synthetic).
        seed: seed of the synthetic inputs.
        workers: decoding threads (default: up to 4).
        model: the model the inputs are for: a YOLO model gets 640 by default, a side that is a
            multiple of its grid, and letterboxed images.

    Raises:
        UsageError: conflicting or invalid options.
        InputError: the files cannot be read or do not fit the model.
    """
    if images is not None and tensors is not None:
        raise UsageError(f"pass either {opt('images')} or {opt('tensors')}, not both")
    images = Path(images) if images is not None else None
    tensors = Path(tensors) if tensors is not None else None
    if batch_size < 1:
        raise UsageError(f"{opt('batch_size')} must be at least 1")
    if batches is not None and batches < 1:
        raise UsageError(f"{opt('batches')} must be at least 1")
    if imgsz is not None and imgsz < 1:
        raise UsageError(f"{opt('imgsz')} must be at least 1")
    if normalize not in ("unit", "imagenet"):
        raise UsageError(f"{opt('normalize')} must be 'unit' or 'imagenet'")
    if tensors is not None:
        stream = InputStream("tensors", str(tensors), batch_size, None, None)
        stream._iter = _limit(_tensor_batches(tensors, channels, batch_size), batches)
        return stream
    size = input_size(model, imgsz)
    letterbox = letterbox or size.letterbox
    from coordatt_diag.load.memory import check_input_batch

    if images is not None:
        files = list_images(images)
        check_input_batch(min(batch_size, len(files)), channels, size.imgsz, "image")
        stream = InputStream("images", str(images), batch_size, normalize, size.note)
        stream._iter = _limit(
            _image_batches(files, stream, channels, size.imgsz, normalize, letterbox,
                           batch_size, workers), batches)
        return stream
    check_input_batch(batch_size, channels, size.imgsz, "synthetic")
    note = SYNTHETIC_NOTE if size.note is None else f"{SYNTHETIC_NOTE}; {size.note}"
    stream = InputStream("synthetic", None, batch_size, None, note)
    stream._iter = _synthetic(channels, size.imgsz, batch_size, batches or SYNTHETIC_BATCHES,
                              seed)
    return stream


def _limit(it: Iterator[torch.Tensor], n: int | None) -> Iterator[torch.Tensor]:
    for i, batch in enumerate(it):
        if n is not None and i >= n:
            return
        yield batch


def _synthetic(channels: int, imgsz: int, batch_size: int, batches: int,
               seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        yield torch.randn(batch_size, channels, imgsz, imgsz, generator=gen)


# ---------------------------------------------------------------------------------------------
# Tensors


def read_array_file(path: Path, option: str, expected: str) -> Any:
    """What a .npy (as a tensor, no pickle) or .pt file (weights_only) holds, for `option`.

    Raises:
        InputError: the file is missing or unreadable; the message names `option` and says to
            save `expected` with torch.save or numpy.save.
    """
    from coordatt_diag.load.checkpoint import check_input_file

    check_input_file(path, option)
    try:
        if path.suffix.lower() == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the same user error
        from coordatt_diag.load.checkpoint import _torch_detail

        raise InputError(
            f"{option} {show_path(path)} is not a readable tensor file: "
            f"{one_line(_torch_detail(exc), 200)}; save {expected} with torch.save or numpy.save"
        ) from exc


def check_plain_tensor(t: torch.Tensor, where: str) -> None:
    """Refuse a tensor the model cannot take as it is: sparse, quantized, meta (no data), complex.

    Raises:
        InputError: naming `where` and the fix.
    """
    if t.layout != torch.strided:
        raise InputError(f"{where} holds a sparse tensor ({t.layout}); save a dense one "
                         "(tensor.to_dense())")
    if t.is_meta or t.device.type == "meta":
        raise InputError(f"{where} holds a meta tensor, which has no data; save the real tensor")
    if t.is_quantized:
        raise InputError(f"{where} holds a quantized tensor; save tensor.dequantize()")
    if t.is_complex():
        raise InputError(f"{where} holds a complex tensor ({t.dtype}); save a real one")


def load_tensor_file(path: Path) -> list[torch.Tensor]:
    """The tensors in a .pt or .npy file, each (N, C, H, W) float32."""
    obj = read_array_file(path, opt("tensors"), "a tensor (N,C,H,W)")
    if isinstance(obj, torch.Tensor):
        chunks = [obj]
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        chunks = list(obj)
    else:
        raise InputError(
            f"{opt('tensors', path)} holds a {type(obj).__name__}; expected a tensor (N,C,H,W) or a "
            "list of them"
        )
    out = []
    for t in chunks:
        check_plain_tensor(t, f"{opt('tensors')} {show_path(path)}")
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4:
            raise InputError(
                f"{opt('tensors', path)} holds a tensor of shape {tuple(t.shape)}; expected (N,C,H,W)"
            )
        if not t.is_floating_point():
            t = t.float()
        out.append(t.float())
    return out


def _tensor_batches(path: Path, channels: int, batch_size: int) -> Iterator[torch.Tensor]:
    chunks = load_tensor_file(path)
    for t in chunks:
        if t.shape[1] != channels:
            raise InputError(
                f"{opt('tensors', path)} has {t.shape[1]} channels but the model's first convolution "
                f"takes {channels}"
            )
    for t in chunks:
        for start in range(0, t.shape[0], batch_size):
            yield t[start:start + batch_size]


# ---------------------------------------------------------------------------------------------
# Images


def list_images(path: Path) -> list[Path]:
    """The image files at `path` (a file, or a folder searched recursively), sorted."""
    if not path.exists():
        raise InputError(f"{opt('images', path)} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"no images under {path}: expected files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    return files


def decode_image(path: Path, channels: int, imgsz: int, normalize: str,
                 letterbox: bool = False) -> np.ndarray:
    """Read one image as a float32 (C, imgsz, imgsz) array."""
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise InputError(
            f"the model takes {channels} input channels; images can feed 1, 3 or 4: use {opt('tensors')}"
        )
    with Image.open(path) as opened:
        im = opened.convert(mode)
    if letterbox:
        im = _letterbox(im, imgsz)
    else:
        im = im.resize((imgsz, imgsz), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr.transpose(2, 0, 1)
    if normalize == "imagenet":
        mean = np.array(IMAGENET_MEAN if channels == 3 else [np.mean(IMAGENET_MEAN)] * channels,
                        dtype=np.float32)[:, None, None]
        std = np.array(IMAGENET_STD if channels == 3 else [np.mean(IMAGENET_STD)] * channels,
                       dtype=np.float32)[:, None, None]
        arr = (arr - mean) / std
    return np.ascontiguousarray(arr)


def _letterbox(im: Any, size: int) -> Any:
    from PIL import Image

    w, h = im.size
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    resized = im.resize((nw, nh), Image.Resampling.BILINEAR)
    fill = (114,) * len(im.getbands())
    canvas = Image.new(im.mode, (size, size), fill if len(fill) > 1 else fill[0])
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def _image_batches(files: list[Path], stream: InputStream, channels: int, imgsz: int,
                   normalize: str, letterbox: bool, batch_size: int,
                   workers: int | None) -> Iterator[torch.Tensor]:
    if channels not in (1, 3, 4):
        raise InputError(
            f"the model takes {channels} input channels; images can feed 1, 3 or 4: use {opt('tensors')}"
        )
    n_workers = workers or min(4, os.cpu_count() or 1)
    ahead = max(2 * batch_size, 8)
    pending: deque[Future[np.ndarray]] = deque()
    todo = iter(files)
    batch: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="decode") as pool:
        def refill() -> None:
            while len(pending) < ahead:
                f = next(todo, None)
                if f is None:
                    return
                pending.append(pool.submit(decode_image, f, channels, imgsz, normalize,
                                           letterbox))
        refill()
        while pending:
            fut = pending.popleft()
            refill()
            try:
                batch.append(fut.result())
            except InputError:
                raise
            except Exception:  # noqa: BLE001 - an unreadable image is skipped and counted
                stream.skipped += 1
                continue
            if len(batch) == batch_size:
                yield torch.from_numpy(np.stack(batch))
                batch = []
        if batch:
            yield torch.from_numpy(np.stack(batch))
