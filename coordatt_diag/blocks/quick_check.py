"""``quick_mask_check``: the one-forward mask diagnostic of seed notebook 000, section 10.

Seed: ``/work/shared/seeds/000_14b362d4935c611d.txt`` section 10 ("Debug: is there mask
collapse?"): put the block in eval mode, run one forward, read ``last_mask_stats()`` and warn when
``std(a_h) < 0.02`` or ``std(a_w) < 0.02`` ("the mask may be becoming constant").

Differences from the notebook: the warnings are returned (and printed only with ``verbose``), and
the module's train/eval mode is restored afterwards. As seed 001 section 9 notes, a freshly
initialised ``CoordinateAttPlus`` (head init std 0.01) also has mask std about 0.004, so this
check alone cannot tell an untrained block from a collapsed one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from coordatt_diag.blocks.coordinate import MaskStats

STD_THRESHOLD = 0.02
"""Mask std under which the seed warns (seed 000 section 10)."""

LOW_STD_WARNING = "mask std very low -> the mask may be becoming constant"
"""The seed's warning (``"UYARI: maske std cok dusuk -> maske sabitleniyor olabilir."``)."""


def quick_mask_check(
    module: nn.Module,
    x: torch.Tensor,
    *,
    std_threshold: float = STD_THRESHOLD,
    verbose: bool = False,
) -> tuple[MaskStats | None, list[str]]:
    """Run one eval-mode forward and check the mask spread (seed 000 section 10).

    Args:
        module: A block with ``last_mask_stats()`` (``CoordinateAtt``, ``CoordinateAttPlus``; for
            ``CBAMChannelPlusCoord`` pass its ``.coord``). Without it the stats are ``None``.
        x: A sample input batch (B, C, H, W).
        std_threshold: Warn when the std of ``a_h`` or ``a_w`` is below this.
        verbose: Print the stats and the warnings, as the notebook does.

    Returns:
        ``(stats, warnings)``: the ``last_mask_stats()`` dict (or ``None``) and a list of warning
        strings (empty when the masks look alive).
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(x)
            stats_fn = getattr(module, "last_mask_stats", None)
            stats: MaskStats | None = stats_fn() if callable(stats_fn) else None
    finally:
        module.train(was_training)

    warnings: list[str] = []
    if stats is not None:
        std_h = stats["a_h"]["std"]
        std_w = stats["a_w"]["std"]
        if std_h < std_threshold or std_w < std_threshold:
            warnings.append(
                f"{LOW_STD_WARNING} (std a_h={std_h:.4g}, a_w={std_w:.4g}, threshold {std_threshold:g})"
            )
    if verbose:
        print(stats)
        for message in warnings:
            print(f"WARNING: {message}")
    return stats, warnings
