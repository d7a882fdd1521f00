"""Factories for the timm state-dict checkpoints made by ``make_checkpoints.py``.

Use as ``--path tests/integration --model timm_factories:resnet18_coord`` (no weights are
downloaded: ``pretrained=False``).

timm's ResNet takes the attention type through ``block_args=dict(attn_layer=...)``: a top-level
``attn_layer=`` raises ``TypeError: ResNet.__init__() got an unexpected keyword argument``. The
ByobNet family (gernet_*, mobilevit_*, ...) and NFNet take ``attn_layer=`` directly. The
attention module sits at ``layerX.Y.se`` of every BasicBlock, applied after ``bn2``.
"""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

# small ResNet-18 layout: 8 BasicBlocks, 16/32/64/128 channels (~0.7 M parameters).
# zero_init_last=False: timm zeroes bn2.weight by default, which would feed the attention
# blocks an all-zero input (constant masks) in an untrained model.
RESNET_KW: dict[str, Any] = dict(
    channels=(16, 32, 64, 128), stem_width=16, zero_init_last=False
)

ATTN_TYPES = ("coord", "scoord", "ela", "strip", "se", "eca", "cbam", "lcbam")


def resnet18_attn(attn_layer: str, num_classes: int = 10) -> nn.Module:
    return timm.create_model(
        "resnet18",
        pretrained=False,
        num_classes=num_classes,
        block_args=dict(attn_layer=attn_layer),
        **RESNET_KW,
    )


def resnet18_coord(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("coord", num_classes)


def resnet18_scoord(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("scoord", num_classes)


def resnet18_ela(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("ela", num_classes)


def resnet18_strip(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("strip", num_classes)


def resnet18_se(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("se", num_classes)


def resnet18_eca(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("eca", num_classes)


def resnet18_cbam(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("cbam", num_classes)


def resnet18_lcbam(num_classes: int = 10) -> nn.Module:
    return resnet18_attn("lcbam", num_classes)


def mobilevit_xxs_coord(num_classes: int = 10) -> nn.Module:
    """MobileViT-XXS (ByobNet) with CoordAttn in 7 blocks, next to its own self-attention."""
    return timm.create_model(
        "mobilevit_xxs", pretrained=False, num_classes=num_classes, attn_layer="coord"
    )
