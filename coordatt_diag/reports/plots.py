"""The report's figures, drawn with matplotlib's Agg canvas from the frozen `Report`.

* per block: a histogram of each mask (the streamed 64-bin histogram, `MaskStats.hist`) with the
  saturation lines at 0.01 / 0.99 and the near-constant band (mean +- `near_constant_warn`);
  the axis profiles (`MaskStats.profile_h` / `profile_w`: mean mask value at each position with the
  channel-to-channel spread; a flat line is a position-blind block); the overlays (sample images
  with the block's channel-averaged map, see `coordatt_diag.runs.overlays`);
* for the model: the mask std and the std ratio of every block in model order, with thresholds,
  coloured by status; and the overlay grid, one column per block.

matplotlib is imported inside the functions (`--help` must stay fast), figures are built with
`matplotlib.figure.Figure` on an explicit Agg canvas (no pyplot, no global backend switch), and
the output is deterministic (no dates in the files) so that the same report gives the same pages.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from coordatt_diag.reports.layout import (
    STATUS_COLORS,
    block_thresholds,
    file_stem,
    mask_status,
)
from coordatt_diag.results import BlockReport, Report, display_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from coordatt_diag.runs.overlays import BlockOverlay, Overlays

FORMATS = ("png", "svg")
#: Saturation thresholds of the findings (`sat_low` counts values <= 0.01, `sat_high` >= 0.99).
SAT_LOW, SAT_HIGH = 0.01, 0.99
DPI = 80
#: Blocks per overlay grid figure (one column each); more blocks make more figures.
GRID_COLUMNS = 10

_RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.parse_math": False,  # block names are user text: "$" must not start mathtext
    "svg.hashsalt": "coordatt-diag",  # stable element ids: the same report gives the same SVG
    "svg.fonttype": "path",
    "image.cmap": "viridis",
}


@dataclass(frozen=True)
class Plot:
    """One rendered figure.

    Attributes:
        file: file name inside the report's `plots/` folder.
        alt: what it shows (alt text and caption).
        data: the encoded PNG or SVG.
        kind: "summary", "hist", "profile", "overlay" or "grid".
        block: the block's name for per-block figures.
    """

    file: str
    alt: str
    data: bytes
    kind: str
    block: str | None = None

    @property
    def mime(self) -> str:
        return "image/svg+xml" if self.file.endswith(".svg") else "image/png"


@dataclass(frozen=True)
class PlotSet:
    """Every figure of a report.

    Attributes:
        summary: the model figure (std and std ratio per block).
        grid: the overlay grid figures (one column per block), empty without overlays.
        blocks: block name -> its figures (histograms, profiles, overlays).
    """

    summary: Plot | None
    grid: list[Plot] = field(default_factory=list)
    blocks: dict[str, list[Plot]] = field(default_factory=dict)

    def all(self) -> list[Plot]:
        out = [self.summary] if self.summary is not None else []
        out += self.grid
        for plots in self.blocks.values():
            out += plots
        return out


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_RC):  # type: ignore[arg-type]
        yield


def _figure(width: float, height: float, *, left: float = 0.55, right: float = 0.15,
            top: float = 0.5, bottom: float = 0.45, wspace: float = 0.25,
            hspace: float = 0.3) -> Figure:
    """A figure on an Agg canvas with fixed margins in inches.

    Fixed margins instead of constrained layout: the layout engine draws every figure twice,
    which doubles the time of a report with dozens of blocks.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=bottom / height, wspace=wspace, hspace=hspace)
    return fig


def _few_ticks(ax: Axes, x: list[float] | None = None, y_count: int = 4) -> None:
    """Few tick labels: building tick labels is most of the drawing time of a small figure."""
    from matplotlib.ticker import MaxNLocator

    if x is not None:
        ax.set_xticks(x)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(y_count))


def _encode(fig: Figure, fmt: str, palette: bool = True) -> bytes:
    """The figure as SVG, or as PNG: with a palette of 256 colours for a plot (plenty for flat
    colours and text, a third of the bytes), in true colour for images (a palette would band
    their smooth gradients)."""
    buf = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buf, format="svg", dpi=DPI, metadata={"Date": None, "Creator": None})
        return buf.getvalue()
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    image = Image.fromarray(rgba[..., :3])
    if palette:
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE)
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _short(name: str, width: int = 28) -> str:
    """A block name cut from the left to fit a tick label (the end says the most)."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


# ---------------------------------------------------------------------------------------------
# Per block


class _HistogramCanvas:
    """The histogram figure of a block with `n` masks, built once and updated for each block.

    Building axes and their ticks is most of the cost of a small figure; a report for a model
    with dozens of blocks draws the same layout again and again, so it is built once per layout
    and only the data, the titles and the limits change.
    """

    def __init__(self, n: int) -> None:
        from matplotlib.patches import Rectangle

        self.cols = min(n, 3)
        self.rows = math.ceil(n / self.cols)
        self.fig = _figure(2.6 * self.cols + 0.7, 1.75 * self.rows + 0.95, top=0.75,
                           bottom=0.45, wspace=0.12, hspace=0.55)
        axes = self.fig.subplots(self.rows, self.cols, squeeze=False, sharey=True)
        self.axes = list(axes.flat[:n])
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        edges = np.linspace(0.0, 1.0, 65)
        self.panels = []
        for ax in self.axes:
            band = Rectangle((0.45, 0), 0.1, 1, transform=ax.get_xaxis_transform(),
                             color="#fde725", alpha=0.45, lw=0, zorder=0)
            ax.add_patch(band)
            stairs = ax.stairs(np.zeros(64), edges, fill=True, color="#3b528b")
            ax.axvline(SAT_LOW, color="#999999", lw=0.9, ls="--")
            ax.axvline(SAT_HIGH, color="#999999", lw=0.9, ls="--")
            mean = ax.axvline(0.5, color="#21918c", lw=1.0)
            title = ax.set_title("")
            ax.set_xlim(0, 1)
            _few_ticks(ax, [0, 0.5, 1], 3)
            self.panels.append((stairs, band, mean, title))
        self.axes[0].yaxis.set_major_formatter(_percent())
        for row in axes:
            row[0].set_ylabel("share of values")
        for ax in axes[-1]:
            ax.set_xlabel("mask value")
        self.suptitle = self.fig.suptitle("", fontsize=8)

    def render(self, block: BlockReport, masks: list[tuple[str, Any]], band_width: float,
               fmt: str) -> bytes:
        top = 0.0
        for (stairs, band, mean_line, title), (name, m) in zip(self.panels, masks, strict=True):
            counts = np.asarray(m.hist, dtype=float)
            share = counts / max(counts.sum(), 1.0)
            top = max(top, float(share.max()))
            stairs.set_data(share, np.linspace(0.0, 1.0, len(counts) + 1))
            has_mean = m.mean is not None
            band.set_visible(has_mean)
            mean_line.set_visible(has_mean)
            if has_mean:
                lo, hi = max(0.0, m.mean - band_width), min(1.0, m.mean + band_width)
                band.set_x(lo)
                band.set_width(hi - lo)
                mean_line.set_xdata([m.mean, m.mean])
            std = "-" if m.std is None else f"{m.std:.4f}"
            mean = "-" if m.mean is None else f"{m.mean:.3f}"
            status = mask_status(block, name)
            title.set_text(f"{name}: mean {mean}, std {std}")
            title.set_color(STATUS_COLORS[status] if status != "ok" else "black")
        self.axes[0].set_ylim(0, max(top * 1.12, 1e-3))
        self.suptitle.set_text(
            f"{_short(display_name(block.name), 70)}: mask histograms\n(dashed: 0.01 / 0.99 "
            f"saturation; yellow band: mean ± {band_width:g}, near-constant width)")
        return _encode(self.fig, fmt)


def histogram_figure(report: Report, block: BlockReport, fmt: str = "png",
                     cache: dict[Any, Any] | None = None) -> bytes | None:
    """Histograms of the block's masks (the streamed 64-bin histograms) with the saturation
    lines at 0.01 / 0.99 and the near-constant band (mean +- `near_constant_warn`).

    Args:
        report: the report (its thresholds).
        block: the block.
        fmt: "png" or "svg".
        cache: figures to reuse between calls (one per layout); None draws a new one.

    Returns:
        The encoded figure, or None for a block without mask values.
    """
    masks = [(k, m) for k, m in block.masks.items() if m.count and sum(m.hist)]
    if not masks:
        return None
    band = float(block_thresholds(report, block.name).get("near_constant_warn", 0.03))
    key = ("hist", len(masks))
    canvas = cache.get(key) if cache is not None else None
    if canvas is None:
        canvas = _HistogramCanvas(len(masks))
        if cache is not None:
            cache[key] = canvas
    return canvas.render(block, masks, band, fmt)  # type: ignore[no-any-return]


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


Lines = list[tuple[str, list[float], list[float]]]


class _ProfileCanvas:
    """The axis-profile figure for a given number of lines along H and along W, built once and
    updated for each block (see `_HistogramCanvas`)."""

    def __init__(self, counts: tuple[tuple[str, int], ...]) -> None:
        from matplotlib.patches import Polygon

        self.fig = _figure(3.2 * len(counts) + 0.8, 2.3, top=0.55, bottom=0.45, wspace=0.3)
        axes = self.fig.subplots(1, len(counts), squeeze=False)[0]
        self.axes = list(axes)
        self.artists: list[list[tuple[Any, Any, Any]]] = []
        for ax, (axis, n) in zip(self.axes, counts, strict=True):
            panel = []
            for k in range(n):
                band = Polygon(np.zeros((3, 2)), closed=True, alpha=0.25, lw=0)
                ax.add_patch(band)
                (line,) = ax.plot([0, 1], [0.5, 0.5], lw=1.4, ms=2.5)
                # a text label, not a legend: legends are slow to lay out
                label = ax.text(0.99, 0.97 - 0.09 * k, "", transform=ax.transAxes, ha="right",
                                va="top", fontsize=7, fontweight="bold")
                panel.append((line, band, label))
            self.artists.append(panel)
            _few_ticks(ax)
            ax.set_xlabel(f"position along {axis}")
            ax.set_title(f"along {axis}")
        self.axes[0].set_ylabel("mean mask value")
        self.suptitle = self.fig.suptitle("")

    def render(self, block: BlockReport, panels: list[tuple[str, Lines]], fmt: str) -> bytes:
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
        names = list(block.masks)
        for ax, artists, (_, lines) in zip(self.axes, self.artists, panels, strict=True):
            lo, hi, length = 1.0, 0.0, 1
            for (line, band, label), (name, mean_l, spread_l) in zip(artists, lines,
                                                                     strict=True):
                mean = np.asarray(mean_l, dtype=float)
                spread = np.asarray(spread_l, dtype=float)
                pos = np.arange(len(mean), dtype=float)
                length = max(length, len(mean))
                color = cmap(0.1 + 0.5 * names.index(name) / max(len(names) - 1, 1))
                band.set_xy(np.concatenate([np.column_stack([pos, mean - spread]),
                                            np.column_stack([pos[::-1], (mean + spread)[::-1]])]))
                band.set_facecolor(color)
                line.set_data(pos, mean)
                line.set_color(color)
                line.set_marker("o" if len(mean) <= 24 else "")
                label.set_text(name)
                label.set_color(color)
                both = np.concatenate([mean - spread, mean + spread])
                both = both[np.isfinite(both)]
                if both.size:
                    lo, hi = min(lo, float(both.min())), max(hi, float(both.max()))
            # at least 0.1 of mask value on the axis, so a flat profile looks flat, not noisy;
            # the whole band in view (mean ± spread can pass 0 or 1: the axis follows it)
            mid, half = (lo + hi) / 2, max((hi - lo) / 2 * 1.1, 0.05)
            ax.set_ylim(mid - half, mid + half)
            ax.set_xlim(-0.5, max(length - 0.5, 0.5))
        self.suptitle.set_text(f"{_short(display_name(block.name), 60)}: axis profiles (band: "
                               "± spread across channels; a flat line is position-blind)")
        return _encode(self.fig, fmt)


def profile_figure(report: Report, block: BlockReport, fmt: str = "png",
                   cache: dict[Any, Any] | None = None) -> bytes | None:
    """The axis profiles of the block's masks: mean mask value at each position along H and
    along W with the channel-to-channel spread as a band (`MaskStats.profile_h` / `profile_w`).

    Args:
        report: the report.
        block: the block.
        fmt: "png" or "svg".
        cache: figures to reuse between calls (one per layout); None draws a new one.

    Returns:
        The encoded figure, or None for a block without positional masks.
    """
    along: dict[str, Lines] = {"H": [], "W": []}
    for name, m in block.masks.items():
        if m.profile_h is not None:
            along["H"].append((name, m.profile_h.mean, m.profile_h.spread))
        if m.profile_w is not None:
            along["W"].append((name, m.profile_w.mean, m.profile_w.spread))
    panels = [(axis, lines) for axis, lines in along.items() if lines]
    if not panels:
        return None
    key = ("profile", tuple((axis, len(lines)) for axis, lines in panels))
    canvas = cache.get(key) if cache is not None else None
    if canvas is None:
        canvas = _ProfileCanvas(key[1])
        if cache is not None:
            cache[key] = canvas
    return canvas.render(block, panels, fmt)  # type: ignore[no-any-return]


#: Side of one overlay cell in pixels (the longer side of the sample image).
CELL = 100
_GAP = 4
_ALPHA = 0.55  # weight of the map over the image
#: Narrowest colour range of an overlay (mask value): less would show a flat map as structure.
MIN_SPAN = 0.06
#: Overlay colour scales: "absolute" maps mask value 0..1 to the colour bar for every block, so
#: blocks compare at a glance (a collapsed mask at 0.22-0.26 is one flat colour); "block"
#: stretches each block's colours over its own range (at least `MIN_SPAN`), to see the structure
#: of a weak mask.
OVERLAY_SCALES = ("absolute", "block")


def _to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a float (h0, w0) or (h0, w0, 3) array (PIL, one channel at a time)."""
    from PIL import Image

    if arr.ndim == 3:
        return np.stack([_resize(arr[..., k], h, w) for k in range(arr.shape[2])], axis=2)
    src = np.ascontiguousarray(arr, dtype=np.float32)
    return np.asarray(Image.fromarray(src, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def _cell_shape(image: np.ndarray) -> tuple[int, int]:
    h, w = image.shape[:2]
    scale = CELL / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def map_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """The colour range of a block's overlay maps: their min to max over the samples, widened
    to at least `MIN_SPAN` around the middle so that a near-constant map shows as flat, not as
    stretched noise."""
    values = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(1)
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, MIN_SPAN / 2)
    lo, hi = mid - half, mid + half
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > 1:
        lo, hi = max(0.0, lo - (hi - 1)), 1.0
    return lo, hi


def composite(image: np.ndarray, mask_map: np.ndarray | None,
              value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """The sample image at cell size with the mask map upsampled to it and laid over it
    (viridis over `value_range`), as an (h, w, 3) float array."""
    from matplotlib import colormaps

    h, w = _cell_shape(image)
    rgb = np.clip(_resize(_to_rgb(image), h, w), 0, 1)
    if mask_map is None:
        return rgb
    lo, hi = value_range
    m = _resize(np.nan_to_num(mask_map, nan=lo), h, w)
    alpha = np.where(np.isfinite(_resize(mask_map, h, w)), _ALPHA, 0.0)[..., None]
    colored = colormaps["viridis"](np.clip((m - lo) / max(hi - lo, 1e-12), 0, 1))[..., :3]
    return np.asarray((1 - alpha) * rgb + alpha * colored)


def _mosaic_figure(cells: list[list[np.ndarray | None]], col_titles: list[tuple[str, str]],
                   row_titles: list[str], title: str, bar_labels: tuple[str, str, str],
                   fmt: str) -> bytes:
    """One image of equal cells (rows x columns) with a colour scale at the right (labels: top,
    middle, bottom), drawn on a single axes pixel for pixel: far cheaper than an axes per cell."""
    from matplotlib import colormaps

    first = next(c for row in cells for c in row if c is not None)
    ch, cw = first.shape[:2]
    n_rows, n_cols = len(cells), len(cells[0])
    bar_w = 10
    width = n_cols * (cw + _GAP) + 2 * _GAP + bar_w
    height = n_rows * (ch + _GAP) - _GAP
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None:
                y, x = r * (ch + _GAP), c * (cw + _GAP)
                canvas[y:y + ch, x:x + cw] = cell
    ramp = np.linspace(1, 0, height, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    canvas[:, width - bar_w:] = colormaps["viridis"](ramp)[..., :3]
    title_lines = max((t.count("\n") + 1 for t, _ in col_titles), default=1)
    left = 20 if row_titles else 4
    right, top, bottom = 34, 12 + 11 * (title.count("\n") + 1) + 10 * title_lines, 6
    # wide enough for the title (about 5 pixels per character at 8 points and DPI 80)
    spare = max(0, round(5.2 * max(len(t) for t in title.split("\n"))) + 16
                - (width + left + right))
    left, right = left + spare // 2, right + spare - spare // 2
    fw, fh = width + left + right, height + top + bottom
    fig = _figure(fw / DPI, fh / DPI)
    ax = fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))
    ax.imshow(canvas, interpolation="none", aspect="auto", extent=(0, width, height, 0))
    ax.set_axis_off()
    for c, (text, color) in enumerate(col_titles):
        ax.text(c * (cw + _GAP) + cw / 2, -3, text, ha="center", va="bottom", fontsize=6.5,
                color=color, clip_on=False, linespacing=1.1)
    for r, text in enumerate(row_titles):
        ax.text(-4, r * (ch + _GAP) + ch / 2, text, ha="right", va="center", rotation=90,
                fontsize=6.5, clip_on=False)
    for text, y, va in zip(bar_labels, (0, height / 2, height), ("top", "center", "bottom"),
                           strict=True):
        ax.text(width + 2, y, text, ha="left", va=va, fontsize=6.5, clip_on=False)
    fig.text(0.5, 1 - 4 / fh, title, ha="center", va="top", fontsize=8)
    return _encode(fig, fmt, palette=False)


def _scale_range(maps: list[np.ndarray], scale: str) -> tuple[float, float]:
    return map_range(maps) if scale == "block" else (0.0, 1.0)


def _values_range(maps: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(1)
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)


def _scale_words(scale: str) -> str:
    return ("colours stretched over this block's own range" if scale == "block"
            else "colours on the absolute 0-1 scale")


def overlay_figure(block: BlockReport, overlay: BlockOverlay, images: list[np.ndarray],
                   fmt: str = "png", scale: str = "absolute") -> bytes:
    """The block's map over each sample image; colours over mask values 0..1 (`scale`
    "absolute") or over the block's own range ("block")."""
    pairs = list(zip(images, overlay.maps, strict=False))
    lo, hi = _scale_range(overlay.maps, scale)
    cells: list[np.ndarray | None] = [composite(image, m, (lo, hi)) for image, m in pairs]
    titles = [(f"sample {i}: {np.nanmin(m):.3f} to {np.nanmax(m):.3f}", "black")
              for i, (_, m) in enumerate(pairs, start=1)]
    labels = (f"{hi:.3f}", f"{(lo + hi) / 2:.3f}", f"{lo:.3f}")
    return _mosaic_figure([cells], titles, [], f"{_short(display_name(block.name), 60)}: "
                          f"{overlay.source} (mean over channels) on the inputs\n"
                          f"{_scale_words(scale)}", labels, fmt)


def overlay_grid(report: Report, overlays: Overlays, fmt: str = "png",
                 scale: str = "absolute") -> list[bytes]:
    """The overlay grid: a row per sample, the input first, then one column per block in model
    order (`GRID_COLUMNS` blocks per figure); colours over mask values 0..1 (`scale`
    "absolute"), or per column over that block's range ("block")."""
    shown_blocks = [b for b in report.blocks if b.name in overlays.blocks]
    if not shown_blocks or not overlays.images:
        return []
    out = []
    parts = math.ceil(len(shown_blocks) / GRID_COLUMNS)
    for start in range(0, len(shown_blocks), GRID_COLUMNS):
        chunk = shown_blocks[start:start + GRID_COLUMNS]
        ranges = [_scale_range(overlays.blocks[b.name].maps, scale) for b in chunk]
        cells: list[list[np.ndarray | None]] = []
        for r, image in enumerate(overlays.images):
            row: list[np.ndarray | None] = [composite(image, None)]
            for block, value_range in zip(chunk, ranges, strict=True):
                maps = overlays.blocks[block.name].maps
                row.append(composite(image, maps[r], value_range) if r < len(maps) else None)
            cells.append(row)
        # under each name: the colour span (block scale), or the values the maps hold (absolute)
        spans = ranges if scale == "block" else [
            _values_range(overlays.blocks[b.name].maps) for b in chunk]
        titles = [("input", "black")] + [
            (f"{_short(display_name(b.name), 20)}\n{lo:.3f} to {hi:.3f}",
             STATUS_COLORS.get(b.status, "black") if b.status != "ok" else "black")
            for b, (lo, hi) in zip(chunk, spans, strict=True)]
        rows = [f"sample {r + 1}" for r in range(len(overlays.images))]
        part = f" ({start // GRID_COLUMNS + 1}/{parts})" if parts > 1 else ""
        if scale == "block":
            what = "each column's colours span the range under its name"
            bar = ("high", "", "low")
        else:
            what = ("colours on the absolute 0-1 scale for every block; under each name, the "
                    "values its maps hold")
            bar = ("1", "0.5", "0")
        out.append(_mosaic_figure(
            cells, titles, rows,
            f"mask overlays, one column per block in model order{part}\n{what}", bar, fmt))
    return out


# ---------------------------------------------------------------------------------------------
# Model


def summary_figure(report: Report, fmt: str = "png") -> bytes | None:
    """Per block in model order: each mask's std (log scale) and the std ratio, as bars coloured
    by status, with the near-constant and std-ratio thresholds."""
    blocks = report.blocks
    if not blocks:
        return None
    n = len(blocks)
    th = block_thresholds(report, "")
    longest = max(len(_short(display_name(b.name))) for b in blocks)
    bottom = 0.35 + 0.055 * longest  # room for the rotated block names
    width = min(max(6.5, 0.22 * n + 2.6), 30.0)
    fig = _figure(width, 3.9 + bottom, left=0.8, right=1.9, top=0.45, bottom=bottom,
                  hspace=0.12)
    ax_std, ax_ratio = fig.subplots(2, 1, sharex=True)
    per_block = max((len(b.masks) for b in blocks), default=1) or 1
    bar_w = 0.8 / per_block
    stds_seen: list[float] = []
    xs: list[float] = []
    heights: list[float] = []
    colors: list[str] = []
    for i, b in enumerate(blocks):
        for j, m in enumerate(b.masks.values()):
            if m.std is None or not 0 < m.std < math.inf:  # NaN masks have no bar
                continue
            xs.append(i - 0.4 + bar_w * (j + 0.5))
            heights.append(m.std)
            colors.append(STATUS_COLORS.get(b.status, "#777777"))
    stds_seen = list(heights)
    ax_std.bar(xs, heights, width=bar_w * 0.88, color=colors)
    warn = float(th.get("near_constant_warn", 0.03))
    fail = float(th.get("near_constant_fail", 0.01))
    ax_std.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax_std.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # no mathtext
    ax_std.yaxis.set_minor_formatter(NullFormatter())
    ax_std.set_ylim(min([*stds_seen, fail]) / 2, max([*stds_seen, warn]) * 2)
    ax_std.axhline(warn, color=STATUS_COLORS["warn"], ls="--", lw=1,
                   label=f"near-constant warn\n(std < {warn:g})")
    ax_std.axhline(fail, color=STATUS_COLORS["fail"], ls="--", lw=1,
                   label=f"near-constant fail\n(std < {fail:g})")
    ax_std.set_ylabel("mask std\n(a bar per mask)")
    ax_std.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    floor = float(th.get("std_ratio_floor", 0.45))
    floor_mul = float(th.get("std_ratio_floor_multiplicative", 0.0))
    ratios = [(i, b) for i, b in enumerate(blocks) if b.std_ratio is not None
              and math.isfinite(b.std_ratio.mean) and math.isfinite(b.std_ratio.min)]
    for hatched in (False, True):
        sel = [(i, b) for i, b in ratios if b.identity_path == hatched]
        if sel:
            ax_ratio.bar([i for i, _ in sel], [b.std_ratio.mean for _, b in sel],  # type: ignore[union-attr]
                         width=0.7, color=[STATUS_COLORS.get(b.status, "#777777") for _, b in sel],
                         hatch="///" if hatched else None, edgecolor="white", lw=0)
    if ratios:
        ax_ratio.hlines([b.std_ratio.min for _, b in ratios],  # type: ignore[union-attr]
                        [i - 0.35 for i, _ in ratios], [i + 0.35 for i, _ in ratios],
                        color="black", lw=0.9, label="min over batches")
    # each floor drawn over the blocks it judges: a block with an identity path against
    # std_ratio_floor, a purely multiplicative one against std_ratio_floor_multiplicative (0: none)
    floors: dict[bool, list[tuple[int, float]]] = {True: [], False: []}
    for i, b in ratios:
        bt = block_thresholds(report, b.name)
        value = float(bt.get("std_ratio_floor" if b.identity_path
                             else "std_ratio_floor_multiplicative", floor if b.identity_path
                             else floor_mul))
        if value > 0:
            floors[b.identity_path].append((i, value))
    drawn = [v for pts in floors.values() for _, v in pts]
    top = max([b.std_ratio.mean for _, b in ratios] + drawn + [1e-3])  # type: ignore[union-attr]
    ax_ratio.set_ylim(0, top * 1.15)
    for identity, style, label in ((True, "--", "floor, blocks with\nan identity path (hatched)"),
                                   (False, ":", "floor, multiplicative\nblocks")):
        pts = floors[identity]
        if pts:
            ax_ratio.hlines([v for _, v in pts], [i - 0.45 for i, _ in pts],
                            [i + 0.45 for i, _ in pts], color=STATUS_COLORS["warn"], ls=style,
                            lw=1.2, label=f"{label} ({', '.join(sorted({f'{v:g}' for _, v in pts}))})")
    ax_ratio.set_ylabel("std ratio\nstd(out) / std(x)")
    ax_ratio.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax_ratio.yaxis.set_major_locator(_max_n(4))
    ax_ratio.set_xticks(range(n))
    size = 7 if n <= 20 else (6 if n <= 40 else 5)
    ax_ratio.set_xticklabels([_short(display_name(b.name)) for b in blocks], rotation=60,
                             ha="right", rotation_mode="anchor", fontsize=size)
    ax_ratio.set_xlim(-0.6, n - 0.4)
    for tick, b in zip(ax_ratio.get_xticklabels(), blocks, strict=True):
        if b.status != "ok":
            tick.set_color(STATUS_COLORS.get(b.status, "black"))
    from matplotlib.patches import Patch

    handles = [Patch(color=STATUS_COLORS[s], label=f"{s} block") for s in ("ok", "warn", "fail")]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(1 - 1.85 / width, 0.02),
               frameon=False)
    s = report.summary
    fig.suptitle(f"{s.blocks} attention blocks in model order: {s.ok} ok, {s.warn} warn, "
                 f"{s.fail} fail")
    return _encode(fig, fmt)


def _max_n(n: int) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(n)


# ---------------------------------------------------------------------------------------------
# Everything


def render_plots(report: Report, overlays: Overlays | None = None, fmt: str = "png",
                 overlay_scale: str = "absolute") -> PlotSet:
    """Every figure of the report.

    Args:
        report: the frozen report.
        overlays: the overlay data of the run (None: no overlay figures).
        fmt: "png" or "svg".
        overlay_scale: "absolute" (default: every block's colours over mask values 0..1) or
            "block" (each block stretched over its own range); see `OVERLAY_SCALES`.

    Returns:
        The figures, named for the report's `plots/` folder.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    with _style():
        data = summary_figure(report, fmt)
        summary = Plot(f"summary.{fmt}", "mask std and std ratio of every block", data,
                       "summary") if data is not None else None
        grid: list[Plot] = []
        if overlays is not None:
            for i, g in enumerate(overlay_grid(report, overlays, fmt, overlay_scale), start=1):
                grid.append(Plot(f"overlays-{i}.{fmt}", f"mask overlays, part {i}", g, "grid"))
        per_block: dict[str, list[Plot]] = {}
        cache: dict[Any, Any] = {}
        for i, block in enumerate(report.blocks, start=1):
            stem = file_stem(i, block.name)
            shown = display_name(block.name)
            plots: list[Plot] = []
            hist = histogram_figure(report, block, fmt, cache)
            if hist is not None:
                plots.append(Plot(f"{stem}-hist.{fmt}", f"{shown}: mask histograms", hist,
                                  "hist", block.name))
            prof = profile_figure(report, block, fmt, cache)
            if prof is not None:
                plots.append(Plot(f"{stem}-profile.{fmt}", f"{shown}: axis profiles", prof,
                                  "profile", block.name))
            if overlays is not None and block.name in overlays.blocks:
                ov = overlay_figure(block, overlays.blocks[block.name], overlays.images, fmt,
                                    overlay_scale)
                plots.append(Plot(f"{stem}-overlay.{fmt}", f"{shown}: mask overlays", ov,
                                  "overlay", block.name))
            per_block[block.name] = plots
    return PlotSet(summary=summary, grid=grid, blocks=per_block)
