"""The user's attention blocks, faithful to the seed notebooks.

- ``CoordinateAtt`` (+ ``HSwish``): seed 000 section 0, with add-ons 1-9 as constructor options
  (``coordatt_diag.blocks.coordinate``).
- ``ChannelAttentionFusionT``, ``CoordinateAttPlus``, ``CBAMChannelPlusCoord``: seed 001 step 2
  (``coordatt_diag.blocks.cbam_coord``).
- ``quick_mask_check``: seed 000 section 10 (``coordatt_diag.blocks.quick_check``).
"""

from __future__ import annotations

from coordatt_diag.blocks.cbam_coord import (
    CBAMChannelPlusCoord,
    ChannelAttentionFusionT,
    CoordinateAttPlus,
    make_norm,
    softplus_inverse,
)
from coordatt_diag.blocks.coordinate import CoordinateAtt, HSwish, MaskStats, mask_stats
from coordatt_diag.blocks.quick_check import quick_mask_check

__all__ = [
    "CBAMChannelPlusCoord",
    "ChannelAttentionFusionT",
    "CoordinateAtt",
    "CoordinateAttPlus",
    "HSwish",
    "MaskStats",
    "make_norm",
    "mask_stats",
    "quick_mask_check",
    "softplus_inverse",
]
