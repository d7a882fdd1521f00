"""Benchmark models (random weights, written here so nothing is downloaded).

* `mobilenet_v2_coordatt`: MobileNetV2 with a Coordinate Attention block in every inverted
  residual, after the depthwise convolution (the CoordAtt paper's ImageNet model); 224x224.
* `yolo_coordatt`: a detector the size of YOLOv8n (width 0.25, depth 0.33: Conv/C2f backbone,
  SPPF, FPN+PAN neck, three-scale head returning a tuple) with a CoordAtt block after each
  backbone C2f stage and each neck C2f, as users add it to Ultralytics models; 640x640, stride 32.

Both are factories for `coordatt-diag --path benchmarks --model models:<name>`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0) / 6.0


class CoordAtt(nn.Module):
    """Coordinate Attention (Hou et al., CVPR 2021), as in the paper's reference code."""

    def __init__(self, c: int, reduction: int = 32) -> None:
        super().__init__()
        mid = max(8, c // reduction)
        self.conv1 = nn.Conv2d(c, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mid, c, 1)
        self.conv_w = nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x_h = x.mean(3, keepdim=True)
        x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()
        a_w = self.conv_w(y_w.permute(0, 1, 3, 2)).sigmoid()
        return x * a_h * a_w


def _conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), CoordAtt(hidden),
                   _conv_bn(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2_coordatt(num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 with CoordAtt in each of its 17 inverted residuals."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
    cin = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(_conv_bn(cin, 1280, 1, 1))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))


class ConvBNSiLU(nn.Module):
    """Ultralytics' Conv: convolution, batch norm, SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBNSiLU(c, c, 3)
        self.cv2 = ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Ultralytics' C2f: split, n bottlenecks, concatenate every intermediate output."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNSiLU(cin, 2 * self.c, 1)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        c = cin // 2
        self.cv1 = ConvBNSiLU(cin, c, 1)
        self.cv2 = ConvBNSiLU(c * 4, cout, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloCoordAtt(nn.Module):
    """YOLOv8n-sized detector with CoordAtt after each C2f (7 blocks); returns 3 feature maps."""

    stride = torch.tensor([8.0, 16.0, 32.0])

    def __init__(self, num_classes: int = 80) -> None:
        super().__init__()
        self.b0 = nn.Sequential(ConvBNSiLU(3, 16, 3, 2), ConvBNSiLU(16, 32, 3, 2),
                                C2f(32, 32, 1, True), CoordAtt(32))
        self.b1 = nn.Sequential(ConvBNSiLU(32, 64, 3, 2), C2f(64, 64, 2, True), CoordAtt(64))
        self.b2 = nn.Sequential(ConvBNSiLU(64, 128, 3, 2), C2f(128, 128, 2, True), CoordAtt(128))
        self.b3 = nn.Sequential(ConvBNSiLU(128, 256, 3, 2), C2f(256, 256, 1, True),
                                CoordAtt(256), SPPF(256, 256))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = nn.Sequential(C2f(256 + 128, 128), CoordAtt(128))
        self.n2 = nn.Sequential(C2f(128 + 64, 64), CoordAtt(64))
        self.d1 = ConvBNSiLU(64, 64, 3, 2)
        self.n3 = C2f(64 + 128, 128)
        self.d2 = ConvBNSiLU(128, 128, 3, 2)
        self.n4 = nn.Sequential(C2f(128 + 256, 256), CoordAtt(256))
        no = num_classes + 64  # class scores + 4 x 16 box distribution bins, as YOLOv8
        self.heads = nn.ModuleList(
            nn.Sequential(ConvBNSiLU(c, 64, 3), ConvBNSiLU(64, 64, 3), nn.Conv2d(64, no, 1))
            for c in (64, 128, 256))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.b1(self.b0(x))
        p4 = self.b2(p3)
        p5 = self.b3(p4)
        t4 = self.n1(torch.cat([self.up(p5), p4], 1))
        o3 = self.n2(torch.cat([self.up(t4), p3], 1))
        o4 = self.n3(torch.cat([self.d1(o3), t4], 1))
        o5 = self.n4(torch.cat([self.d2(o4), p5], 1))
        return tuple(h(o) for h, o in zip(self.heads, (o3, o4, o5), strict=True))


def yolo_coordatt(num_classes: int = 80) -> nn.Module:
    """The YOLOv8n-sized CoordAtt detector (factory)."""
    return YoloCoordAtt(num_classes)
