"""User-written blocks for the integration checkpoints (a stand-in for a user's own code).

Importable as ``custom_blocks`` with ``--path tests/integration --import custom_blocks``: the
YOLO checkpoints made by ``make_checkpoints.py`` pickle ``custom_blocks.CoordAtt``, and the
Lightning checkpoint's state dict loads into ``small_coord_cnn()``.

``CoordAtt`` is the standard Coordinate Attention block (Hou et al., CVPR 2021, reference code
github.com/houqb/CoordAttention): average-pool over W and over H, a shared 1x1 conv + BN +
h-swish on the concatenated strips, 1x1 ``conv_h`` / ``conv_w`` heads, ``.sigmoid()`` gates, and
``x * a_h * a_w``.
"""

from __future__ import annotations

import torch
from torch import nn


class CoordAtt(nn.Module):
    """Coordinate Attention: a_h (N,C,H,1) and a_w (N,C,1,W) gates, out = x * a_h * a_w.

    In a YOLO YAML the first argument is the input channel count, written out literally
    (``parse_model`` passes arguments of unknown modules through unchanged), e.g.
    ``[-1, 1, CoordAtt, [64]]``.
    """

    def __init__(self, inp: int, oup: int | None = None, reduction: int = 32) -> None:
        super().__init__()
        oup = oup or inp
        mip = max(8, inp // reduction)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))  # (N, C, H, 1): mean over W
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))  # (N, C, 1, W): mean over H
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        _, _, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()
        return identity * a_h * a_w


def _conv_bn_act(c1: int, c2: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c1, c2, 3, stride, 1, bias=False), nn.BatchNorm2d(c2), nn.SiLU(inplace=True)
    )


class SmallCoordNet(nn.Module):
    """A small classifier with two CoordAtt blocks (``features.2`` and ``features.4``)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_act(3, width, 2),
            _conv_bn_act(width, 2 * width, 2),
            CoordAtt(2 * width),
            _conv_bn_act(2 * width, 4 * width, 2),
            CoordAtt(4 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def small_coord_cnn(num_classes: int = 10, width: int = 16) -> SmallCoordNet:
    """Factory (``custom_blocks:small_coord_cnn``) for the Lightning checkpoint's state dict."""
    return SmallCoordNet(num_classes=num_classes, width=width)


def register_with_ultralytics() -> None:
    """Make ``CoordAtt`` and Ultralytics' own ``CBAM`` nameable in a YOLO model YAML.

    ``ultralytics.nn.tasks.parse_model`` resolves a module name with ``globals()[m]`` of
    ``ultralytics.nn.tasks``; that module imports neither a user's classes nor ``CBAM`` /
    ``ChannelAttention`` / ``SpatialAttention`` (they live in ``ultralytics.nn.modules``).
    """
    import ultralytics.nn.tasks as tasks
    from ultralytics.nn.modules import CBAM, ChannelAttention, SpatialAttention

    tasks.CoordAtt = CoordAtt  # type: ignore[attr-defined]
    tasks.CBAM = CBAM  # type: ignore[attr-defined]
    tasks.ChannelAttention = ChannelAttention  # type: ignore[attr-defined]
    tasks.SpatialAttention = SpatialAttention  # type: ignore[attr-defined]
