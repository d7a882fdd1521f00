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
    from coordatt_diag.capture.engine import MaskCapture
    from coordatt_diag.errors import DiagError
    from coordatt_diag.results import Report
    from coordatt_diag.runs.inspect import InspectOptions, analyze_model, inspect_checkpoint

__all__ = ["__version__", "analyze_model", "inspect_checkpoint", "InspectOptions", "Report", "MaskCapture",
           "DiagError"]

# name -> the module that defines it; imported on first use, so `import coordatt_diag` stays cheap
_LAZY = {
    "analyze_model": "coordatt_diag.runs.inspect",
    "inspect_checkpoint": "coordatt_diag.runs.inspect",
    "InspectOptions": "coordatt_diag.runs.inspect",
    "Report": "coordatt_diag.results",
    "MaskCapture": "coordatt_diag.capture.engine",
    "DiagError": "coordatt_diag.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coordatt_diag' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
