"""Attention modules as widely copied public code writes them (part B: CBAM-like, spatial,
coordinate, grouped). Written here in the public op sequence (named per module), not copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Masks = dict[str, torch.Tensor]


# --- CBAM: Jongchan/attention-module (MODELS/cbam.py: ChannelGate, ChannelPool, SpatialGate) ---
class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class ChannelGate(nn.Module):
    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(Flatten(), nn.Linear(c, c // reduction), nn.ReLU(),
                                 nn.Linear(c // reduction, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        channel_att_sum = self.mlp(avg_pool)
        max_pool = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        channel_att_sum = channel_att_sum + self.mlp(max_pool)
        scale = torch.sigmoid(channel_att_sum).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class ChannelPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_out = self.spatial(self.compress(x))
        scale = torch.sigmoid(x_out)
        return x * scale


class JongchanCBAM(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(c)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


def _mlp(seq: nn.Sequential, v: torch.Tensor) -> torch.Tensor:
    return seq[3](F.relu(seq[1](v.flatten(1))))


def ref_jongchan_cbam(m: JongchanCBAM, x: torch.Tensor) -> Masks:
    mlp = m.ChannelGate.mlp
    ca = torch.sigmoid(_mlp(mlp, x.mean((2, 3))) + _mlp(mlp, x.amax((2, 3))))[:, :, None, None]
    y = x * ca
    pooled = torch.cat([y.amax(1, keepdim=True), y.mean(1, keepdim=True)], 1)
    return {"channel": ca, "spatial": torch.sigmoid(m.SpatialGate.spatial(pooled))}


# --- BAM: Jongchan/attention-module (MODELS/bam.py: att = 1 + sigmoid(ca * sa); att * x) -------
class BAMChannelGate(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.gate_c = nn.Sequential(Flatten(), nn.Linear(c, c // 4), nn.BatchNorm1d(c // 4),
                                    nn.ReLU(), nn.Linear(c // 4, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(x)


class BAMSpatialGate(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.gate_s = nn.Sequential(
            nn.Conv2d(c, c // 4, 1), nn.BatchNorm2d(c // 4), nn.ReLU(),
            nn.Conv2d(c // 4, c // 4, 3, padding=4, dilation=4), nn.BatchNorm2d(c // 4), nn.ReLU(),
            nn.Conv2d(c // 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_s(x).expand_as(x)


class BAM(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.channel_att = BAMChannelGate(c)
        self.spatial_att = BAMSpatialGate(c)

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        return att * in_tensor


def ref_bam(m: BAM, x: torch.Tensor) -> Masks:
    g = m.channel_att.gate_c
    ca = g[4](F.relu(g[2](g[1](x.mean((2, 3))))))[:, :, None, None]
    sa = m.spatial_att.gate_s(x)
    return {"a_hw": torch.sigmoid(ca * sa)}


# --- ResNet-CBAM: luuuyi/CBAM.PyTorch (model/resnet_cbam.py: ca/sa return only the sigmoid and
#     the residual block multiplies its own conv output: out = self.ca(out) * out) ---------------
class LuuuyiChannelAttention(nn.Module):
    def __init__(self, c: int, ratio: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(c, c // ratio, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(c // ratio, c, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return self.sigmoid(avg_out + max_out)


class LuuuyiSpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        x = torch.cat([avg_out, max_out], dim=1)
        return self.sigmoid(self.conv1(x))


class CBAMBasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.ca = LuuuyiChannelAttention(c)
        self.sa = LuuuyiSpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.ca(out) * out
        out = self.sa(out) * out
        out += residual
        return self.relu(out)


def _luuuyi_ca(ca: LuuuyiChannelAttention, v: torch.Tensor) -> torch.Tensor:
    f = lambda p: ca.fc2(F.relu(ca.fc1(p)))  # noqa: E731
    return torch.sigmoid(f(v.mean((2, 3), keepdim=True)) + f(v.amax((2, 3), keepdim=True)))


def _luuuyi_sa(sa: LuuuyiSpatialAttention, v: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(sa.conv1(torch.cat([v.mean(1, keepdim=True), v.amax(1, keepdim=True)], 1)))


def ref_cbam_basic(m: CBAMBasicBlock, x: torch.Tensor) -> Masks:
    out = m.bn2(m.conv2(F.relu(m.bn1(m.conv1(x)))))
    ca = _luuuyi_ca(m.ca, out)
    out = ca * out
    return {"channel": ca, "spatial": _luuuyi_sa(m.sa, out)}


# --- `x * self.se(x)` in a parent's forward (YOLO attention collections: an SE that returns only
#     its weights, applied by the C3-style parent that also holds the convs) ------------------
class SEWeight(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class BottleneckSE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                 nn.SiLU())
        self.se = SEWeight(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return x + y * self.se(y)


def ref_bottleneck_se(m: BottleneckSE, x: torch.Tensor) -> Masks:
    y = m.cv1(x)
    return {"channel": torch.sigmoid(m.se.fc2(F.relu(m.se.fc1(y.mean((2, 3), keepdim=True)))))}


# --- timm layers/cbam.py CbamModule (ChannelAttn: mean and amax through one mlp; SpatialAttn) -
class TimmChannelAttn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(c // 4, c, 1, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * self.gate(x_avg + x_max)


class TimmSpatialAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1))
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        x_attn = self.conv(x_attn)
        return x * self.gate(x_attn)


class TimmCbam(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.channel = TimmChannelAttn(c)
        self.spatial = TimmSpatialAttn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def ref_timm_cbam(m: TimmCbam, x: torch.Tensor) -> Masks:
    ch = m.channel
    f = lambda p: ch.fc2(F.relu(ch.fc1(p)))  # noqa: E731
    ca = torch.sigmoid(f(x.mean((2, 3), keepdim=True)) + f(x.amax((2, 3), keepdim=True)))
    y = x * ca
    sa = torch.sigmoid(m.spatial.conv(torch.cat([y.mean(1, keepdim=True),
                                                 y.amax(1, keepdim=True)], 1)))
    return {"channel": ca, "spatial": sa}


# --- timm layers/cbam.py LightCbamModule (0.5 * mean + 0.5 * amax; F.sigmoid) ----------------
class TimmLightChannelAttn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pool = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)
        x_attn = self.fc2(F.relu(self.fc1(x_pool)))
        return x * F.sigmoid(x_attn)


class TimmLightSpatialAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_attn = 0.5 * x.mean(dim=1, keepdim=True) + 0.5 * x.amax(dim=1, keepdim=True)
        x_attn = self.conv(x_attn)
        return x * F.sigmoid(x_attn)


class TimmLightCbam(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.channel = TimmLightChannelAttn(c)
        self.spatial = TimmLightSpatialAttn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def ref_timm_light_cbam(m: TimmLightCbam, x: torch.Tensor) -> Masks:
    ch = m.channel
    pool = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)
    ca = torch.sigmoid(ch.fc2(F.relu(ch.fc1(pool))))
    y = x * ca
    sa = torch.sigmoid(m.spatial.conv(0.5 * y.mean(1, keepdim=True) + 0.5 * y.amax(1, keepdim=True)))
    return {"channel": ca, "spatial": sa}


# --- ultralytics nn/modules/conv.py CBAM (ChannelAttention: x * act(fc(pool(x)))) ------------
class UltraChannelAttention(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(c, c, 1, 1, 0, bias=True)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(self.pool(x)))


class UltraSpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.cv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.cv1(torch.cat([torch.mean(x, 1, keepdim=True),
                                                torch.max(x, 1, keepdim=True)[0]], 1)))


class UltraCBAM(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.channel_attention = UltraChannelAttention(c)
        self.spatial_attention = UltraSpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_attention(self.channel_attention(x))


def ref_ultra_cbam(m: UltraCBAM, x: torch.Tensor) -> Masks:
    ca = torch.sigmoid(m.channel_attention.fc(x.mean((2, 3), keepdim=True)))
    y = x * ca
    sa = torch.sigmoid(m.spatial_attention.cv1(torch.cat([y.mean(1, keepdim=True),
                                                          y.amax(1, keepdim=True)], 1)))
    return {"channel": ca, "spatial": sa}


# --- scSE: qubvel/segmentation_models.pytorch (base/modules.py SCSEModule: x*cSE + x*sSE) ------
class SCSEModule(nn.Module):
    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.cSE = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // reduction, 1),
                                 nn.ReLU(inplace=True), nn.Conv2d(c // reduction, c, 1),
                                 nn.Sigmoid())
        self.sSE = nn.Sequential(nn.Conv2d(c, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cSE(x) + x * self.sSE(x)


def ref_scse(m: SCSEModule, x: torch.Tensor) -> Masks:
    ca = torch.sigmoid(m.cSE[3](F.relu(m.cSE[1](x.mean((2, 3), keepdim=True)))))
    return {"channel": ca, "spatial": torch.sigmoid(m.sSE[0](x))}


# --- Attention U-Net gate: LeeJunHyun/Image_Segmentation (network.py Attention_block; called as
#     att(g=d5, x=x4) and multiplying x) ------------------------------------------------------
class AttentionBlock(nn.Module):
    def __init__(self, f_g: int, f_l: int, f_int: int) -> None:
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(f_g, f_int, 1, bias=True), nn.BatchNorm2d(f_int))
        self.W_x = nn.Sequential(nn.Conv2d(f_l, f_int, 1, bias=True), nn.BatchNorm2d(f_int))
        self.psi = nn.Sequential(nn.Conv2d(f_int, 1, 1, bias=True), nn.BatchNorm2d(1),
                                 nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g1 = self.W_g(g)
        x1 = self.W_x(x)
        psi = self.relu(g1 + x1)
        psi = self.psi(psi)
        return x * psi


def ref_attention_unet(m: AttentionBlock, g: torch.Tensor, x: torch.Tensor) -> Masks:
    psi = F.relu(m.W_g(g) + m.W_x(x))
    return {"spatial": torch.sigmoid(m.psi[1](m.psi[0](psi)))}


# --- Triplet attention: landskape-ai/triplet-attention (ZPool, AttentionGate with sigmoid_, three
#     permuted branches averaged) ----------------------------------------------------------------
class ZPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class TripletGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.compress = ZPool()
        self.conv = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_out = self.conv(self.compress(x))
        scale = torch.sigmoid_(x_out)
        return x * scale


class TripletAttention(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cw = TripletGate()
        self.hc = TripletGate()
        self.hw = TripletGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_perm1 = x.permute(0, 2, 1, 3).contiguous()
        x_out1 = self.cw(x_perm1)
        x_out11 = x_out1.permute(0, 2, 1, 3).contiguous()
        x_perm2 = x.permute(0, 3, 2, 1).contiguous()
        x_out2 = self.hc(x_perm2)
        x_out21 = x_out2.permute(0, 3, 2, 1).contiguous()
        x_out = self.hw(x)
        return 1 / 3 * (x_out + x_out11 + x_out21)


def _zgate(g: TripletGate, v: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(g.conv(torch.cat([v.amax(1, keepdim=True), v.mean(1, keepdim=True)], 1)))


def ref_triplet(m: TripletAttention, x: torch.Tensor) -> Masks:
    # each branch's gate is spatial in its own branch's layout: (B, 1, C, W), (B, 1, H, C), (B, 1, H, W)
    return {"spatial": _zgate(m.cw, x.permute(0, 2, 1, 3)),
            "spatial#2": _zgate(m.hc, x.permute(0, 3, 2, 1)),
            "spatial#3": _zgate(m.hw, x)}


# --- SimAM: ZjjConan/SimAM (parameter-free energy, nn.Sigmoid) --------------------------------
class SimAM(nn.Module):
    def __init__(self, c: int = 0, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.activaton = nn.Sigmoid()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        n = w * h - 1
        x_minus_mu_square = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = x_minus_mu_square / (4 * (x_minus_mu_square.sum(dim=[2, 3], keepdim=True) / n
                                      + self.e_lambda)) + 0.5
        return x * self.activaton(y)


def ref_simam(m: SimAM, x: torch.Tensor) -> Masks:
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean((2, 3), keepdim=True)) ** 2
    return {"a_hw": torch.sigmoid(d / (4 * (d.sum((2, 3), keepdim=True) / n + m.e_lambda)) + 0.5)}


# --- Coordinate attention: houqb/CoordAttention (coordatt.py: h_sigmoid/h_swish, pool_h/pool_w,
#     cat, conv1-bn1-act, split, a_h/a_w sigmoid, identity * a_w * a_h) ------------------------
class HSigmoid(nn.Module):
    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + 3) / 6


class HSwish(nn.Module):
    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.sigmoid = HSigmoid(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(x)


class CoordAtt(nn.Module):
    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, c // reduction)
        self.conv1 = nn.Conv2d(c, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mip, c, 1)
        self.conv_w = nn.Conv2d(mip, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()
        return identity * a_w * a_h


def _coord_mid(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = x.shape[2]
    y = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], 2)
    y = m.bn1(m.conv1(y))
    y = F.hardswish(y)
    return y[:, :, :h], y[:, :, h:].transpose(2, 3)


def ref_coordatt(m: CoordAtt, x: torch.Tensor) -> Masks:
    yh, yw = _coord_mid(m, x)
    return {"a_h": torch.sigmoid(m.conv_h(yh)), "a_w": torch.sigmoid(m.conv_w(yw))}


# --- Coordinate attention as YOLO attention collections also write it (a_w computed on the
#     (B, C, W, 1) layout and permuted when applied; a_w before a_h) ----------------------------
class CoordAttPermuteLate(CoordAtt):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        a_w = self.conv_w(x_w).sigmoid()
        a_h = self.conv_h(x_h).sigmoid()
        return x * a_w.permute(0, 1, 3, 2) * a_h


def ref_coordatt_late(m: CoordAttPermuteLate, x: torch.Tensor) -> Masks:
    yh, yw = _coord_mid(m, x)
    return {"a_w": torch.sigmoid(m.conv_w(yw)), "a_h": torch.sigmoid(m.conv_h(yh))}


# --- ELA: efficient local attention (AIFengheshu/Plug-play-modules, YOLO collections): gates on
#     3-D (B, C, H) / (B, C, W) tensors viewed to 4-D -----------------------------------------
class ELA(nn.Module):
    def __init__(self, c: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.pad = kernel_size // 2
        self.conv = nn.Conv1d(c, c, kernel_size=kernel_size, padding=self.pad, groups=c,
                              bias=False)
        self.gn = nn.GroupNorm(min(16, c), c)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        x_h = torch.mean(x, dim=3, keepdim=True).view(b, c, h)
        x_h = self.sigmoid(self.gn(self.conv(x_h))).view(b, c, h, 1)
        x_w = torch.mean(x, dim=2, keepdim=True).view(b, c, w)
        x_w = self.sigmoid(self.gn(self.conv(x_w))).view(b, c, 1, w)
        return x * x_h * x_w


def ref_ela(m: ELA, x: torch.Tensor) -> Masks:
    ah = torch.sigmoid(m.gn(m.conv(x.mean(3))))[..., None]
    aw = torch.sigmoid(m.gn(m.conv(x.mean(2))))[:, :, None, :]
    return {"a_h": ah, "a_w": aw}


# --- MLCA: wandahangFY/MLCA (local and global ECA gates resampled with adaptive_avg_pool2d) ----
class MLCA(nn.Module):
    def __init__(self, c: int, local_size: int = 5, local_weight: float = 0.5) -> None:
        super().__init__()
        self.local_size = local_size
        self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.conv_local = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.local_weight = local_weight
        self.local_arv_pool = nn.AdaptiveAvgPool2d(local_size)
        self.global_arv_pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local_arv = self.local_arv_pool(x)
        global_arv = self.global_arv_pool(local_arv)
        b, c, m, n = x.shape
        _, c_local, _, _ = local_arv.shape
        temp_local = local_arv.view(b, c_local, -1).transpose(-1, -2).reshape(b, 1, -1)
        temp_global = global_arv.view(b, c, -1).transpose(-1, -2)
        y_local = self.conv_local(temp_local)
        y_global = self.conv(temp_global)
        ls = self.local_size
        y_local_transpose = y_local.reshape(b, ls * ls, c).transpose(-1, -2).view(b, c, ls, ls)
        y_global_transpose = y_global.view(b, -1).unsqueeze(-1).unsqueeze(-1)
        att_local = y_local_transpose.sigmoid()
        att_global = F.adaptive_avg_pool2d(y_global_transpose.sigmoid(), [ls, ls])
        att_all = F.adaptive_avg_pool2d(att_global * (1 - self.local_weight)
                                        + (att_local * self.local_weight), [m, n])
        return x * att_all


def ref_mlca(m: MLCA, x: torch.Tensor) -> Masks:
    b, c = x.shape[:2]
    ls = m.local_size
    local = F.adaptive_avg_pool2d(x, ls)
    seq = local.reshape(b, c, ls * ls).transpose(1, 2).reshape(b, 1, -1)
    att_local = torch.sigmoid(m.conv_local(seq).reshape(b, ls * ls, c).transpose(1, 2)
                              .reshape(b, c, ls, ls))
    glob = local.mean((2, 3)).unsqueeze(1)
    att_global = torch.sigmoid(m.conv(glob)).reshape(b, c, 1, 1)
    return {"a_hw": att_local, "channel": att_global}
