"""Attention modules as widely copied public code writes them (part A: channel and CBAM-like).

Each module is written here in the op sequence of the public code named in its comment (not
copied). `ref_*` recompute the masks by hand from the module's own layers, in the layout the
report uses: channel (B, C, 1, 1), spatial (B, 1, H, W), a_h (B, C, H, 1), a_w (B, C, 1, W),
a_hw (B, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Masks = dict[str, torch.Tensor]


# --- SE: moskomule/senet.pytorch (senet/se_module.py SELayer) --------------------------------
class SELayer(nn.Module):
    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // reduction, c, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


def ref_se_layer(m: SELayer, x: torch.Tensor) -> Masks:
    y = torch.sigmoid(m.fc[2](F.relu(m.fc[0](x.mean((2, 3))))))
    return {"channel": y[:, :, None, None]}


# --- SE inside a residual block: moskomule/senet.pytorch (senet/se_resnet.py SEBasicBlock) -----
class SEBasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.se = SELayer(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.se(out)
        out += residual
        return self.relu(out)


# --- timm layers/squeeze_excite.py SEModule (x.mean, conv fc, gate layer) ---------------------
class TimmSEModule(nn.Module):
    def __init__(self, c: int, rd: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, rd, 1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, c, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc1(x_se)
        x_se = self.act(self.bn(x_se))
        x_se = self.fc2(x_se)
        return x * self.gate(x_se)


def ref_timm_se(m: TimmSEModule, x: torch.Tensor) -> Masks:
    return {"channel": torch.sigmoid(m.fc2(F.relu(m.fc1(x.mean((2, 3), keepdim=True)))))}


# --- timm layers/squeeze_excite.py EffectiveSEModule with timm's hard_sigmoid (relu6(x+3)/6) ---
def timm_hard_sigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class EffectiveSE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.fc(x_se)
        return x * timm_hard_sigmoid(x_se)


def ref_ese(m: EffectiveSE, x: torch.Tensor) -> Masks:
    return {"channel": F.hardsigmoid(m.fc(x.mean((2, 3), keepdim=True)))}


# --- timm layers/eca.py EcaModule (conv1d over channels, view(B, -1, 1, 1), expand_as) --------
class TimmEca(nn.Module):
    def __init__(self, c: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2,
                              bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y)
        y = y.view(x.shape[0], -1, 1, 1).sigmoid()
        return x * y.expand_as(x)


def ref_timm_eca(m: TimmEca, x: torch.Tensor) -> Masks:
    y = m.conv(x.mean((2, 3)).unsqueeze(1))
    return {"channel": torch.sigmoid(y).reshape(x.shape[0], -1, 1, 1)}


# --- timm layers/eca.py CecaModule (circular padding before the conv1d) -----------------------
class TimmCeca(nn.Module):
    def __init__(self, c: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=0, bias=True)
        self.padding = (kernel_size - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = F.pad(y, (self.padding, self.padding), mode="circular")
        y = self.conv(y)
        y = torch.sigmoid(y).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


def ref_timm_ceca(m: TimmCeca, x: torch.Tensor) -> Masks:
    y = x.mean((2, 3)).unsqueeze(1)
    y = torch.cat([y[..., -m.padding:], y, y[..., :m.padding]], dim=-1)
    return {"channel": torch.sigmoid(m.conv(y)).reshape(x.shape[0], -1, 1, 1)}


# --- ECA: BangguWu/ECANet (models/eca_module.py eca_layer: squeeze/transpose/unsqueeze) --------
class EcaLayer(nn.Module):
    def __init__(self, c: int, k_size: int = 3) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        y = self.sigmoid(y)
        return x * y.expand_as(x)


def ref_eca_layer(m: EcaLayer, x: torch.Tensor) -> Masks:
    y = m.conv(x.mean((2, 3)).unsqueeze(1))
    return {"channel": torch.sigmoid(y).reshape(x.shape[0], -1, 1, 1)}


# --- SRM: hyunjaelee410/style-based-recalibration-module (mean+std, grouped conv1d "cfc") -----
class SRMLayer(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cfc = nn.Conv1d(c, c, kernel_size=2, bias=False, groups=c)
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        mean = x.view(b, c, -1).mean(-1).unsqueeze(-1)
        std = x.view(b, c, -1).std(-1).unsqueeze(-1)
        u = torch.cat((mean, std), -1)
        z = self.cfc(u)
        z = self.bn(z)
        g = torch.sigmoid(z)
        g = g.view(b, c, 1, 1)
        return x * g.expand_as(x)


def ref_srm(m: SRMLayer, x: torch.Tensor) -> Masks:
    flat = x.flatten(2)
    u = torch.stack([flat.mean(-1), flat.std(-1)], -1)
    return {"channel": torch.sigmoid(m.bn(m.cfc(u))).reshape(x.shape[0], -1, 1, 1)}


# --- FcaNet: cfzd/FcaNet (MultiSpectralAttentionLayer: DCT-weighted pooling, Linear fc) -------
class MultiSpectral(nn.Module):
    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.register_buffer("weight", torch.rand(c, 7, 7))
        self.fc = nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // reduction, c, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x_pooled = F.adaptive_avg_pool2d(x, (7, 7)) if (h, w) != (7, 7) else x
        y = torch.sum(x_pooled * self.weight, dim=[2, 3])
        y = self.fc(y).view(n, c, 1, 1)
        return x * y.expand_as(x)


def ref_fca(m: MultiSpectral, x: torch.Tensor) -> Masks:
    y = (F.adaptive_avg_pool2d(x, (7, 7)) * m.weight).sum((2, 3))
    y = torch.sigmoid(m.fc[2](F.relu(m.fc[0](y))))
    return {"channel": y[:, :, None, None]}


# --- GCT: z-x-yang/GCT (l2 embedding, channel normalisation, gate 1 + tanh) --------------------
class GCT(nn.Module):
    def __init__(self, c: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.epsilon).pow(0.5) * self.alpha
        norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.epsilon).pow(0.5)
        gate = 1.0 + torch.tanh(embedding * norm + self.beta)
        return x * gate


def ref_gct(m: GCT, x: torch.Tensor) -> Masks:
    emb = torch.sqrt((x * x).sum((2, 3), keepdim=True) + m.epsilon) * m.alpha
    norm = m.gamma / torch.sqrt((emb * emb).mean(1, keepdim=True) + m.epsilon)
    return {"channel": 1.0 + torch.tanh(emb * norm + m.beta)}


# --- torchvision ops/misc.py SqueezeExcitation (MobileNetV3: Hardsigmoid, `scale * input`) ----
class TVSqueezeExcitation(nn.Module):
    def __init__(self, c: int, squeeze: int = 8) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._scale(x)
        return scale * x


def ref_tv_se(m: TVSqueezeExcitation, x: torch.Tensor) -> Masks:
    return {"channel": F.hardsigmoid(m.fc2(F.relu(m.fc1(x.mean((2, 3), keepdim=True)))))}


# --- mmdet models/layers/se_layer.py SELayer with mmcv HSigmoid: (x + 3) / 6 then clamp_(0, 1) -
class MMHSigmoid(nn.Module):
    def __init__(self, bias: float = 3.0, divisor: float = 6.0) -> None:
        super().__init__()
        self.bias, self.divisor = bias, divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + self.bias) / self.divisor
        return x.clamp_(0.0, 1.0)


class MMDetSELayer(nn.Module):
    def __init__(self, c: int, ratio: int = 4) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Sequential(nn.Conv2d(c, c // ratio, 1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c // ratio, c, 1), MMHSigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.global_avgpool(x)
        out = self.conv1(out)
        out = self.conv2(out)
        return x * out


def ref_mmdet_se(m: MMDetSELayer, x: torch.Tensor) -> Masks:
    z = m.conv2[0](F.relu(m.conv1[0](x.mean((2, 3), keepdim=True))))
    return {"channel": ((z + 3.0) / 6.0).clamp(0.0, 1.0)}


# --- EfficientNet-PyTorch (lukemelas) MBConvBlock: SE ops inline in the block's forward -------
class MBConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self._expand_conv = nn.Conv2d(c, 2 * c, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(2 * c)
        self._depthwise_conv = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False)
        self._bn1 = nn.BatchNorm2d(2 * c)
        self._se_reduce = nn.Conv2d(2 * c, c // 4, 1)
        self._se_expand = nn.Conv2d(c // 4, 2 * c, 1)
        self._project_conv = nn.Conv2d(2 * c, c, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c)

    @staticmethod
    def _swish(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x_squeezed = F.adaptive_avg_pool2d(x, 1)
        x_squeezed = self._se_reduce(x_squeezed)
        x_squeezed = self._swish(x_squeezed)
        x_squeezed = self._se_expand(x_squeezed)
        x = torch.sigmoid(x_squeezed) * x
        x = self._bn2(self._project_conv(x))
        return x + inputs


def ref_mbconv(m: MBConvBlock, x: torch.Tensor) -> Masks:
    h = F.silu(m._bn0(m._expand_conv(x)))
    h = F.silu(m._bn1(m._depthwise_conv(h)))
    s = m._se_expand(F.silu(m._se_reduce(h.mean((2, 3), keepdim=True))))
    return {"channel": torch.sigmoid(s)}


# --- GCNet: xvjiarui/GCNet (ContextBlock, fusion channel_mul: softmax pooling feeds a matmul) --
class ContextBlock(nn.Module):
    def __init__(self, c: int, ratio: float = 0.25) -> None:
        super().__init__()
        planes = int(c * ratio)
        self.conv_mask = nn.Conv2d(c, 1, kernel_size=1)
        self.softmax = nn.Softmax(dim=2)
        self.channel_mul_conv = nn.Sequential(
            nn.Conv2d(c, planes, kernel_size=1), nn.LayerNorm([planes, 1, 1]),
            nn.ReLU(inplace=True), nn.Conv2d(planes, c, kernel_size=1))

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.conv_mask(x).view(batch, 1, height * width)
        context_mask = self.softmax(context_mask).unsqueeze(-1)
        context = torch.matmul(input_x, context_mask)
        return context.view(batch, channel, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.spatial_pool(x)
        channel_mul_term = torch.sigmoid(self.channel_mul_conv(context))
        return x * channel_mul_term


def ref_gc(m: ContextBlock, x: torch.Tensor) -> Masks:
    b, c, h, w = x.shape
    attn = torch.softmax(m.conv_mask(x).reshape(b, h * w), dim=1)
    context = torch.einsum("bcn,bn->bc", x.reshape(b, c, h * w), attn)[:, :, None, None]
    return {"channel": torch.sigmoid(m.channel_mul_conv(context))}


# --- timm layers/global_context.py GlobalContext (softmax @ context, mlp_scale, gate) --------
class TimmGlobalContext(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_attn = nn.Conv2d(c, 1, kernel_size=1, bias=True)
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = self.conv_attn(x).reshape(b, 1, h * w)
        attn = F.softmax(attn, dim=-1).unsqueeze(3)
        context = x.reshape(b, c, h * w).unsqueeze(1) @ attn
        context = context.view(b, c, 1, 1)
        mlp_x = self.fc2(F.relu(self.fc1(context)))
        return x * self.gate(mlp_x)


def ref_timm_gc(m: TimmGlobalContext, x: torch.Tensor) -> Masks:
    b, c, h, w = x.shape
    attn = torch.softmax(m.conv_attn(x).reshape(b, h * w), dim=1)
    context = torch.einsum("bcn,bn->bc", x.reshape(b, c, h * w), attn)[:, :, None, None]
    return {"channel": torch.sigmoid(m.fc2(F.relu(m.fc1(context))))}


# --- timm layers/gather_excite.py GatherExcite (extent 2: strided pool, interpolate, gate) ----
class TimmGatherExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.gather = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False),
                                    nn.BatchNorm2d(c))
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x_ge = self.gather(x)
        x_ge = F.interpolate(x_ge, size=size)
        return x * self.gate(x_ge)


def ref_timm_ge(m: TimmGatherExcite, x: torch.Tensor) -> Masks:
    return {"a_hw": torch.sigmoid(F.interpolate(m.gather(x), size=x.shape[-2:]))}
