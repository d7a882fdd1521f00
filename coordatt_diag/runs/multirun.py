"""Run several checkpoints on the same inputs, prepared once: the library behind `check`, `trend`
and `compare`.

The inputs are read (images decoded, tensors loaded, noise drawn with its fixed seed) once, for
the first checkpoint, and kept as a list of batches: in memory up to `memory_limit` bytes, then in
a temporary folder (one `.pt` file per batch, deleted afterwards), so that a long list of
checkpoints is compared on exactly the same samples without decoding the images again. A single
checkpoint streams its inputs as `inspect` does.
"""

from __future__ import annotations

import copy
import functools
import glob
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordatt_diag.errors import CheckpointError, DiagError, UsageError, opt

if TYPE_CHECKING:
    import torch

    from coordatt_diag.results import PathArg, Report
    from coordatt_diag.runs.inspect import InspectOptions, Progress

#: Batches kept in memory before the rest go to a temporary folder (512 MiB).
MEMORY_LIMIT = 512 * 1024 * 1024

_GLOB_CHARS = re.compile(r"[*?\[]")


class BatchCache:
    """Input batches read once and replayed for every checkpoint.

    Use as a context manager; iterate it as often as needed. Batches beyond `memory_limit` bytes
    are saved to a temporary folder, removed on exit.
    """

    def __init__(self, memory_limit: int = MEMORY_LIMIT) -> None:
        self.memory_limit = memory_limit
        self._items: list[torch.Tensor | Path] = []
        self._bytes = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> BatchCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the spilled batches."""
        self._items.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def fill(self, batches: Iterable[torch.Tensor]) -> BatchCache:
        """Read every batch of `batches` (once)."""
        import torch

        for batch in batches:
            size = batch.element_size() * batch.nelement()
            if self._bytes + size <= self.memory_limit:
                self._items.append(batch)
                self._bytes += size
                continue
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="coordatt-diag-inputs-")
            path = Path(self._tmp.name) / f"batch{len(self._items):06d}.pt"
            torch.save(batch.contiguous(), path)
            self._items.append(path)
        return self

    def __len__(self) -> int:
        return len(self._items)

    @property
    def spilled(self) -> int:
        """Number of batches kept on disk."""
        return sum(isinstance(i, Path) for i in self._items)

    def __iter__(self) -> Iterator[torch.Tensor]:
        import torch

        for item in self._items:
            if isinstance(item, Path):
                yield torch.load(item, map_location="cpu", weights_only=True)
            else:
                yield item


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key that orders numbers by value: epoch2.pt before epoch10.pt."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower())
            for part in re.split(r"(\d+)", text) if part]


def expand_paths(paths: Iterable[PathArg]) -> list[Path]:
    """The checkpoint files named by `paths`, with glob patterns the shell left unexpanded
    (quoted in CI, or on Windows) expanded here in natural order; duplicates removed.

    Raises:
        CheckpointError: a pattern matches no file.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for arg in paths:
        p = Path(arg)
        text = str(p)
        try:
            exists = os.path.lexists(p)
        except (OSError, ValueError):
            exists = True  # a name too long or with a NUL: read_checkpoint says what is wrong
        if not exists and _GLOB_CHARS.search(text):
            matches = sorted(glob.glob(text, recursive=True), key=natural_key)
            if not matches:
                raise CheckpointError(f"no checkpoint matches {text!r}")
            found = [Path(m) for m in matches]
        else:
            found = [p]
        for f in found:
            key = Path(os.path.realpath(f))  # no error on a symlink loop (reported later)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _naming(exc: DiagError, path: Path) -> DiagError:
    """`exc` with the checkpoint it happened on named first (unless the message names it)."""
    if str(path) in exc.raw:
        return exc
    named = copy.copy(exc)  # same class and exit code
    named.args = (f"{path}: {exc.raw}", *exc.args[1:])
    return named


class _Replay:
    """The cached batches, as an input stream the mask effect can open again."""

    def __init__(self, cache: BatchCache) -> None:
        self.cache = cache

    def batches(self) -> Iterator[torch.Tensor]:
        return iter(self.cache)


def _check_pattern(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{opt('blocks', pattern)} is not a valid regular expression: {exc}") from exc


def inspect_checkpoints(
    paths: list[Path],
    options: InspectOptions | None = None,
    progress: Progress | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
) -> list[Report]:
    """`inspect_checkpoint` for each path, on the same inputs read once (see the module doc).

    With `options.effect` each checkpoint's mask effect is measured on the same batches (and
    `options.labels` lined up with them), as `inspect --effect` does.

    Args:
        paths: checkpoint files, run in this order (one model in memory at a time).
        options: the inspect options (inputs, model factory, thresholds, ...).
        progress: called with the number of batches done, counted over all checkpoints.
        on_checkpoint: called with the index and path before each checkpoint is loaded.

    Returns:
        One report per path, in the order of `paths`.

    Raises:
        UsageError, CheckpointError, InputError: as `inspect_checkpoint`.
    """
    from coordatt_diag.health.thresholds import load_thresholds
    from coordatt_diag.load.checkpoint import add_import_paths, load_model
    from coordatt_diag.load.inputs import input_channels, open_inputs
    from coordatt_diag.runs.inspect import (
        DiscoveryCache,
        InspectOptions,
        _effect_labels,
        finalize,
        place_model,
        run_batches,
    )

    if not paths:
        raise UsageError("no checkpoint given")
    opts = options or InspectOptions()
    thresholds = load_thresholds(opts.config)
    labels = _effect_labels(opts)
    _check_pattern(opts.blocks)
    add_import_paths(list(opts.paths), list(opts.imports))
    done = 0

    def count(_: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done)

    reports: list[Report] = []
    discoveries = DiscoveryCache()  # checkpoints of one architecture are discovered once
    with BatchCache() as cache:
        info = None
        for i, path in enumerate(paths):
            try:
                if on_checkpoint is not None:
                    on_checkpoint(i, path)
                loaded = load_model(path, trust=opts.trust, factory=opts.model,
                                    factory_args=opts.model_args, main_module=opts.main_module)
                placement = place_model(loaded.model, opts.device, opts.half, opts.half_dtype)
                if info is None:
                    open_stream = functools.partial(
                        open_inputs, images=opts.images, tensors=opts.tensors,
                        channels=input_channels(loaded.model), imgsz=opts.imgsz,
                        normalize=opts.normalize, batch_size=opts.batch_size,
                        batches=opts.batches, seed=opts.seed, model=loaded.model,
                    )
                    stream = open_stream()
                    if len(paths) == 1:
                        batches: Iterable[torch.Tensor] = stream.batches()
                    else:
                        batches = cache.fill(stream.batches())
                    state = run_batches(loaded.model, batches, blocks_pattern=opts.blocks,
                                        device=placement.device, progress=count,
                                        discoveries=discoveries)
                    info = stream.info()
                else:
                    state = run_batches(loaded.model, cache, blocks_pattern=opts.blocks,
                                        device=placement.device, progress=count,
                                        discoveries=discoveries)
                effects = None
                if opts.effect:
                    from coordatt_diag.runs.effect import effect_of_inputs

                    again: Callable[[], Any] = (open_stream if len(paths) == 1
                                                else functools.partial(_Replay, cache))
                    effects = effect_of_inputs(loaded.model, state.blocks, again, info,
                                               labels=labels, limited=opts.batches is not None,
                                               device=placement.device)
                reports.append(finalize(loaded.model, state, thresholds, loaded.info, info,
                                        effects=effects))
                del loaded, state
            except DiagError as exc:
                raise _naming(exc, path) from exc
    return reports
