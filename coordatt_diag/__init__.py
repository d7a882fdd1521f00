"""coordatt-diag: a mask-health doctor for attention blocks in PyTorch models.

Point it at a model or a checkpoint, run sample batches through it, and it reports block by
block whether the attention masks (Coordinate Attention's a_h / a_w, CBAM's channel and spatial
maps, SE's channel gates) are alive, with findings and remedies.

The heavy modules (torch, matplotlib) are imported lazily so that ``import coordatt_diag`` and
``coordatt-diag --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from coordatt_diag.analysis import analyze_model, inspect_checkpoint
    from coordatt_diag.results import Report

__all__ = ["__version__", "analyze_model", "inspect_checkpoint", "Report"]


def __getattr__(name: str) -> Any:
    if name in ("analyze_model", "inspect_checkpoint"):
        from coordatt_diag import analysis

        return getattr(analysis, name)
    if name == "Report":
        from coordatt_diag.results import Report

        return Report
    raise AttributeError(f"module 'coordatt_diag' has no attribute {name!r}")
