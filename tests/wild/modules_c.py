"""Attention modules as widely copied public code writes them (part C: grouped batch, branch
selection, parallel self-attention gates, and negatives). Written here in the public op sequence
(named per module), not copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Masks = dict[str, torch.Tensor]


# --- EMA: efficient multi-scale attention (YOLO attention collections, e.g. iscyy/yoloair and
#     the ultralytics forks): grouped batch (B*G, C/G, H, W), a_h/a_w sigmoid, softmax @ matmul
#     (not masks), final spatial sigmoid --------------------------------------------------------
class EMA(nn.Module):
    def __init__(self, c: int, factor: int = 4) -> None:
        super().__init__()
        self.groups = factor
        cg = c // factor
        self.softmax = nn.Softmax(-1)
        self.agp = nn.AdaptiveAvgPool2d((1, 1))
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.gn = nn.GroupNorm(cg, cg)
        self.conv1x1 = nn.Conv2d(cg, cg, kernel_size=1)
        self.conv3x3 = nn.Conv2d(cg, cg, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        group_x = x.reshape(b * self.groups, -1, h, w)
        x_h = self.pool_h(group_x)
        x_w = self.pool_w(group_x).permute(0, 1, 3, 2)
        hw = self.conv1x1(torch.cat([x_h, x_w], dim=2))
        x_h, x_w = torch.split(hw, [h, w], dim=2)
        x1 = self.gn(group_x * x_h.sigmoid() * x_w.permute(0, 1, 3, 2).sigmoid())
        x2 = self.conv3x3(group_x)
        x11 = self.softmax(self.agp(x1).reshape(b * self.groups, -1, 1).permute(0, 2, 1))
        x12 = x2.reshape(b * self.groups, c // self.groups, -1)
        x21 = self.softmax(self.agp(x2).reshape(b * self.groups, -1, 1).permute(0, 2, 1))
        x22 = x1.reshape(b * self.groups, c // self.groups, -1)
        weights = (torch.matmul(x11, x12) + torch.matmul(x21, x22)).reshape(b * self.groups, 1, h, w)
        return (group_x * weights.sigmoid()).reshape(b, c, h, w)


def ref_ema(m: EMA, x: torch.Tensor) -> Masks:
    b, c, h, w = x.shape
    g = m.groups
    gx = x.reshape(b * g, c // g, h, w)
    hw = m.conv1x1(torch.cat([gx.mean(3, keepdim=True), gx.mean(2, keepdim=True).transpose(2, 3)], 2))
    ah = torch.sigmoid(hw[:, :, :h])  # (B*G, C/G, H, 1)
    aw = torch.sigmoid(hw[:, :, h:]).transpose(2, 3)  # (B*G, C/G, 1, W)
    x1 = m.gn(gx * ah * aw)
    x2 = m.conv3x3(gx)
    s1 = torch.softmax(x1.mean((2, 3)), -1)
    s2 = torch.softmax(x2.mean((2, 3)), -1)
    wts = torch.einsum("nc,ncp->np", s1, x2.flatten(2)) + torch.einsum("nc,ncp->np", s2, x1.flatten(2))
    sp = torch.sigmoid(wts).reshape(b, g, h, w)
    return {"a_h": ah.reshape(b, c, h, 1), "a_w": aw.reshape(b, c, 1, w), "spatial": sp}


# --- SGE: implus/PytorchInsight (SpatialGroupEnhance: x * avg_pool(x), group-normalised, sigmoid)
class SpatialGroupEnhance(nn.Module):
    def __init__(self, c: int, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        x = x.view(b * self.groups, -1, h, w)
        xn = x * self.avg_pool(x)
        xn = xn.sum(dim=1, keepdim=True)
        t = xn.view(b * self.groups, -1)
        t = t - t.mean(dim=1, keepdim=True)
        std = t.std(dim=1, keepdim=True) + 1e-5
        t = t / std
        t = t.view(b, self.groups, h, w)
        t = t * self.weight + self.bias
        t = t.view(b * self.groups, 1, h, w)
        x = x * self.sig(t)
        return x.view(b, c, h, w)


def ref_sge(m: SpatialGroupEnhance, x: torch.Tensor) -> Masks:
    b, c, h, w = x.shape
    g = m.groups
    gx = x.reshape(b, g, c // g, h * w)
    t = (gx * gx.mean(-1, keepdim=True)).sum(2)  # (B, G, HW)
    t = (t - t.mean(-1, keepdim=True)) / (t.std(-1, keepdim=True) + 1e-5)
    t = t.reshape(b, g, h, w) * m.weight + m.bias
    return {"spatial": torch.sigmoid(t)}


# --- Shuffle attention: wofmanaf/SA-Net (sa_layer: grouped batch, channel half and spatial half,
#     channel_shuffle) ------------------------------------------------------------------------
class ShuffleAttention(nn.Module):
    def __init__(self, c: int, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        cg = c // (2 * groups)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.cweight = nn.Parameter(torch.zeros(1, cg, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, cg, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, cg, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, cg, 1, 1))
        self.sigmoid = nn.Sigmoid()
        self.gn = nn.GroupNorm(cg, cg)

    @staticmethod
    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, groups, -1, h, w)
        x = x.permute(0, 2, 1, 3, 4)
        return x.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, -1, h, w)
        x_0, x_1 = x.chunk(2, dim=1)
        xn = self.avg_pool(x_0)
        xn = self.cweight * xn + self.cbias
        xn = x_0 * self.sigmoid(xn)
        xs = self.gn(x_1)
        xs = self.sweight * xs + self.sbias
        xs = x_1 * self.sigmoid(xs)
        out = torch.cat([xn, xs], dim=1)
        out = out.reshape(b, -1, h, w)
        return self.channel_shuffle(out, 2)


def ref_shuffle(m: ShuffleAttention, x: torch.Tensor) -> Masks:
    b, c, h, w = x.shape
    g = m.groups
    gx = x.reshape(b * g, c // g, h, w)
    x0, x1 = gx[:, : c // (2 * g)], gx[:, c // (2 * g):]
    ca = torch.sigmoid(m.cweight * x0.mean((2, 3), keepdim=True) + m.cbias)
    sa = torch.sigmoid(m.sweight * m.gn(x1) + m.sbias)
    return {"channel": ca.reshape(b, c // 2, 1, 1), "a_hw": sa.reshape(b, c // 2, h, w)}


# --- SK: implus/SKNet and pprp's SKNet (branches stacked on dim 1, softmax over it) ------------
class SKConv(nn.Module):
    def __init__(self, c: int, m_branches: int = 2, r: int = 4) -> None:
        super().__init__()
        d = max(c // r, 8)
        self.M = m_branches
        self.convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1 + i, dilation=1 + i, groups=4, bias=False),
                          nn.BatchNorm2d(c), nn.ReLU(inplace=True))
            for i in range(m_branches)])
        self.fc = nn.Sequential(nn.Linear(c, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True))
        self.fcs = nn.ModuleList([nn.Linear(d, c) for _ in range(m_branches)])
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feas = torch.cat([conv(x).unsqueeze(1) for conv in self.convs], dim=1)
        fea_u = torch.sum(feas, dim=1)
        fea_s = fea_u.mean(-1).mean(-1)
        fea_z = self.fc(fea_s)
        vectors = torch.cat([fc(fea_z).unsqueeze(1) for fc in self.fcs], dim=1)
        attention_vectors = self.softmax(vectors).unsqueeze(-1).unsqueeze(-1)
        return (feas * attention_vectors).sum(dim=1)


def _select(weights: torch.Tensor) -> torch.Tensor:
    """(B, M, C) branch weights as the report lays them out: (B, C, M, 1)."""
    return weights.transpose(1, 2).unsqueeze(-1)


def ref_sk(m: SKConv, x: torch.Tensor) -> Masks:
    feas = [conv(x) for conv in m.convs]
    z = m.fc(sum(feas).mean((2, 3)))
    return {"select": _select(torch.softmax(torch.stack([fc(z) for fc in m.fcs], 1), 1))}


# --- SK: xmu-xiaoma666/External-Attention-pytorch (SKAttention: stack on dim 0, (K, B, C, 1, 1)
#     weights, nn.Softmax(dim=0)) ------------------------------------------------------------
class SKAttention(nn.Module):
    def __init__(self, c: int, kernels: tuple[int, ...] = (1, 3, 5), d: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, groups=4), nn.BatchNorm2d(c),
                          nn.ReLU()) for k in kernels])
        self.fc = nn.Linear(c, d)
        self.fcs = nn.ModuleList([nn.Linear(d, c) for _ in kernels])
        self.softmax = nn.Softmax(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs, c, _, _ = x.size()
        conv_outs = [conv(x) for conv in self.convs]
        feats = torch.stack(conv_outs, 0)
        u = sum(conv_outs)
        s = u.mean(-1).mean(-1)
        z = self.fc(s)
        weights = [fc(z).view(bs, c, 1, 1) for fc in self.fcs]
        attention_weights = torch.stack(weights, 0)
        attention_weights = self.softmax(attention_weights)
        return (attention_weights * feats).sum(0)


def ref_sk_external(m: SKAttention, x: torch.Tensor) -> Masks:
    outs = [conv(x) for conv in m.convs]
    z = m.fc(sum(outs).mean((2, 3)))
    return {"select": _select(torch.softmax(torch.stack([fc(z) for fc in m.fcs], 1), 1))}


# --- timm layers/selective_kernel.py SelectiveKernel + SelectiveKernelAttn --------------------
class SelectiveKernelAttn(nn.Module):
    def __init__(self, c: int, num_paths: int = 2, attn_channels: int = 8) -> None:
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(c, attn_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(attn_channels)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(attn_channels, c * num_paths, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.sum(1).mean((2, 3), keepdim=True)
        x = self.fc_reduce(x)
        x = self.bn(x)
        x = self.act(x)
        x = self.fc_select(x)
        b, c, h, w = x.shape
        x = x.view(b, self.num_paths, c // self.num_paths, h, w)
        return torch.softmax(x, dim=1)


class TimmSelectiveKernel(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.paths = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c, c, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(c),
                          nn.ReLU(inplace=True)) for d in (1, 2)])
        self.attn = SelectiveKernelAttn(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_paths = [op(x) for op in self.paths]
        x = torch.stack(x_paths, dim=1)
        x_attn = self.attn(x)
        x = x * x_attn
        return torch.sum(x, dim=1)


def ref_timm_sk(m: TimmSelectiveKernel, x: torch.Tensor) -> Masks:
    a = m.attn
    u = sum(op(x) for op in m.paths).mean((2, 3), keepdim=True)
    logits = a.fc_select(F.relu(a.bn(a.fc_reduce(u))))
    b = x.shape[0]
    return {"select": _select(torch.softmax(logits.reshape(b, 2, -1), 1))}


# --- ResNeSt split attention: zhanghang1989/ResNeSt (rSoftMax: view(B, card, radix, -1)
#     .transpose(1, 2), softmax over radix) as in timm layers/split_attn.py ---------------------
class RadixSoftmax(nn.Module):
    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
        x = F.softmax(x, dim=1)
        return x.reshape(batch, -1)


class SplitAttn(nn.Module):
    def __init__(self, c: int, radix: int = 2) -> None:
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(c, c * radix, 3, padding=1, groups=radix, bias=False)
        self.bn0 = nn.BatchNorm2d(c * radix)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(c, 8, 1, groups=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(8, c * radix, 1, groups=1)
        self.rsoftmax = RadixSoftmax(radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        x_gap = x.sum(dim=1)
        x_gap = x_gap.mean((2, 3), keepdim=True)
        x_gap = self.act1(self.bn1(self.fc1(x_gap)))
        x_attn = self.fc2(x_gap)
        x_attn = self.rsoftmax(x_attn).view(b, -1, 1, 1)
        return (x * x_attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1)


def ref_split(m: SplitAttn, x: torch.Tensor) -> Masks:
    y = F.relu(m.bn0(m.conv(x)))
    b = x.shape[0]
    y = y.reshape(b, m.radix, -1, *y.shape[-2:])
    logits = m.fc2(F.relu(m.bn1(m.fc1(y.sum(1).mean((2, 3), keepdim=True)))))
    return {"select": _select(torch.softmax(logits.reshape(b, m.radix, -1), 1))}


# --- EPSA: murufeng/EPSANet (PSAModule: four convs, SEWeightModule sigmoid weights, softmax over
#     the branch axis of (B, 4, C/4, 1, 1)); the convs kept in a plain Python list as the issue
#     describes copies doing, so the module registers no parameters of its own -----------------
class SEWeightModule(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, max(1, c // 2), 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(max(1, c // 2), c, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class PSAModule(nn.Module):
    def __init__(self, c: int, convs: list[nn.Module], se: SEWeightModule) -> None:
        super().__init__()
        self.split = c // 4
        self.convs = convs  # a plain list: not registered
        self.se = [se]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        xs = [conv(x) for conv in self.convs]
        feats = torch.cat(xs, dim=1)
        feats = feats.view(b, 4, self.split, feats.shape[2], feats.shape[3])
        x_se = torch.cat([self.se[0](t) for t in xs], dim=1)
        attention_vectors = x_se.view(b, 4, self.split, 1, 1)
        attention_vectors = torch.softmax(attention_vectors, dim=1)
        feats_weight = feats * attention_vectors
        out = None
        for i in range(4):
            x_se_weight_fp = feats_weight[:, i, :, :]
            out = x_se_weight_fp if out is None else torch.cat((x_se_weight_fp, out), 1)
        assert out is not None
        return out


class EPSANetStage(nn.Module):
    """Owns the parameters (as EPSANet's bottleneck does) and calls the list-held PSA module."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(c, c // 4, k, padding=k // 2, bias=False)
                                       for k in (1, 3, 5, 7)])
        self.se_weight = SEWeightModule(c // 4)
        self.psa = PSAModule(c, list(self.branches), self.se_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.psa(x)


def ref_epsa(m: PSAModule, x: torch.Tensor) -> Masks:
    xs = [conv(x) for conv in m.convs]
    se = torch.stack([m.se[0](t).flatten(1) for t in xs], 1)  # (B, 4, C/4)
    return {"select": _select(torch.softmax(se, 1))}


# --- LSK: zcablii/LSKNet (LSKblock: one sigmoid over (B, 2, H, W) whose slices weight the two
#     branches; the final x * attn multiplies by a conv output, no gate) ---------------------
class LSKblock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, stride=1, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim // 2, 1)
        self.conv2 = nn.Conv2d(dim, dim // 2, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(dim // 2, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn1 = self.conv0(x)
        attn2 = self.conv_spatial(attn1)
        attn1 = self.conv1(attn1)
        attn2 = self.conv2(attn2)
        attn = torch.cat([attn1, attn2], dim=1)
        avg_attn = torch.mean(attn, dim=1, keepdim=True)
        max_attn, _ = torch.max(attn, dim=1, keepdim=True)
        agg = torch.cat([avg_attn, max_attn], dim=1)
        sig = self.conv_squeeze(agg).sigmoid()
        attn = attn1 * sig[:, 0, :, :].unsqueeze(1) + attn2 * sig[:, 1, :, :].unsqueeze(1)
        attn = self.conv(attn)
        return x * attn


def ref_lsk(m: LSKblock, x: torch.Tensor) -> Masks:
    a1 = m.conv0(x)
    a2 = m.conv_spatial(a1)
    a = torch.cat([m.conv1(a1), m.conv2(a2)], 1)
    sig = torch.sigmoid(m.conv_squeeze(torch.cat([a.mean(1, keepdim=True), a.amax(1, keepdim=True)], 1)))
    b, _, h, w = sig.shape
    return {"select": sig.reshape(b, 2, h * w).transpose(1, 2).unsqueeze(-1)}


# --- Polarized self-attention, parallel: xmu-xiaoma666/External-Attention-pytorch
#     (ParallelPolarizedSelfAttention: softmaxes feed matmuls; a channel and a spatial sigmoid
#     weight x, and the output is their sum) --------------------------------------------------
class ParallelPSA(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.ch_wv = nn.Conv2d(c, c // 2, 1)
        self.ch_wq = nn.Conv2d(c, 1, 1)
        self.softmax_channel = nn.Softmax(1)
        self.softmax_spatial = nn.Softmax(-1)
        self.ch_wz = nn.Conv2d(c // 2, c, 1)
        self.ln = nn.LayerNorm(c)
        self.sigmoid = nn.Sigmoid()
        self.sp_wv = nn.Conv2d(c, c // 2, 1)
        self.sp_wq = nn.Conv2d(c, c // 2, 1)
        self.agp = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        channel_wv = self.ch_wv(x).reshape(b, c // 2, -1)
        channel_wq = self.ch_wq(x).reshape(b, -1, 1)
        channel_wq = self.softmax_channel(channel_wq)
        channel_wz = torch.matmul(channel_wv, channel_wq).unsqueeze(-1)
        channel_weight = self.sigmoid(self.ln(self.ch_wz(channel_wz).reshape(b, c, 1)
                                              .permute(0, 2, 1))).permute(0, 2, 1).reshape(b, c, 1, 1)
        channel_out = channel_weight * x
        spatial_wv = self.sp_wv(x).reshape(b, c // 2, -1)
        spatial_wq = self.agp(self.sp_wq(x))
        spatial_wq = spatial_wq.permute(0, 2, 3, 1).reshape(b, 1, c // 2)
        spatial_wq = self.softmax_spatial(spatial_wq)
        spatial_wz = torch.matmul(spatial_wq, spatial_wv)
        spatial_weight = self.sigmoid(spatial_wz.reshape(b, 1, h, w))
        spatial_out = spatial_weight * x
        return spatial_out + channel_out


def ref_psa(m: ParallelPSA, x: torch.Tensor) -> Masks:
    b, c, h, w = x.shape
    q = torch.softmax(m.ch_wq(x).reshape(b, h * w), 1)
    z = torch.einsum("bcn,bn->bc", m.ch_wv(x).reshape(b, c // 2, h * w), q)[:, :, None, None]
    ca = torch.sigmoid(m.ln(m.ch_wz(z).reshape(b, c))).reshape(b, c, 1, 1)
    sq = torch.softmax(m.sp_wq(x).mean((2, 3)), 1)
    sz = torch.einsum("bc,bcn->bn", sq, m.sp_wv(x).reshape(b, c // 2, h * w))
    return {"channel": ca, "spatial": torch.sigmoid(sz).reshape(b, 1, h, w)}


# --- Negatives ---------------------------------------------------------------------------------
# timm vision_transformer.py Attention: token self-attention (softmax consumed by a matmul)
class TokenSelfAttention(nn.Module):
    def __init__(self, c: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (c // heads) ** -0.5
        self.qkv = nn.Linear(c, c * 3)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        t = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(t).transpose(1, 2).reshape(b, c, h, w)


# ultralytics nn/modules/conv.py Conv (conv, BN, SiLU) stacked
class UltraConv(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvStack(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.m = nn.Sequential(UltraConv(c), UltraConv(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


# MobileNetV3 (houqb's h_swish above; hand-written swish `x * torch.sigmoid(x)` and a GELU
# approximation `x * sigmoid(1.702 x)`): activations, not masks
class HSwishStack(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = y * F.relu6(y + 3.0) / 6.0
        y = self.conv2(y)
        y = y * torch.sigmoid(y)
        return y * torch.sigmoid(1.702 * y)


# GELU, tanh approximation written out (huggingface/transformers activations.py
# NewGELUActivation): 0.5 * x * (1 + tanh(...)) is an activation, not a 1 + tanh gate
class GeluTanhStack(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


# DANet (junfu1115/DANet) position attention: softmax over positions consumed by bmm
class PAMModule(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(c, c // 4, 1)
        self.key_conv = nn.Conv2d(c, c // 4, 1)
        self.value_conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        proj_query = self.query_conv(x).view(b, -1, w * h).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(b, -1, w * h)
        energy = torch.bmm(proj_query, proj_key)
        attention = self.softmax(energy)
        proj_value = self.value_conv(x).view(b, -1, w * h)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


# LKA (Visual-Attention-Network VAN): u * attn with attn an unbounded conv output: no gate
class LKA(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.conv1 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.clone()
        return u * self.conv1(self.conv0(x))
