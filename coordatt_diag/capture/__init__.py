"""Layer 2, capture: finding attention blocks in a model and capturing their masks on every
batch (the tracer, the hooks, `MaskCapture`). See `coordatt_diag.capture.engine`."""

from coordatt_diag.capture.engine import BlockCall, BlockSpec, MaskCapture, MaskSite, discover_blocks

__all__ = ["BlockCall", "BlockSpec", "MaskCapture", "MaskSite", "discover_blocks"]
