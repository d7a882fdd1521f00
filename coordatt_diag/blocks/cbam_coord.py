"""CBAM channel attention + Coordinate Attention hybrid: seed notebook 001, STEP 2.

Every formula here comes from ``/work/shared/seeds/001_929940e0e63f7333.txt`` ("CBAM channel +
coordinate attention, step 1 to step 2"), section 7 (the full step-2 code), with the changes
listed in section 4:

- ``ChannelAttentionFusionT`` (section 4A): avg- and max-pooled descriptors through a shared MLP
  ``fc2(act(fc1(.)))``; fused by sum or by a softmax router, ``fusion_w = softmax(logits / Tr)``
  (B,2); ``ca = gate(z / T)`` with ``T`` clamped to ``[t_min, t_max]``; soft scale
  ``y = x * (1 + beta_ca * (ca - 1))``.
- ``CoordinateAttPlus`` (section 4B): axis profiles ``0.5 * (mean + amax)``; local + dilated
  depthwise convs and a 1x1 channel mixer per axis; shared two-layer bottleneck (norm "bn" / "gn" /
  "none"); hard-sigmoid heads initialised with ``normal(std=head_init_std)`` and zero bias;
  ``alpha_{h,w} = sigmoid(alpha_{h,w}_raw)``; ``scale = 1 + beta * (scale_h * scale_w - 1)``
  clamped to ``[scale_min, scale_max]``; optional spatial gate
  ``1 + spatial_gate_beta * (hardsigmoid(pw(dw(x))) - 1)``.
- ``CBAMChannelPlusCoord`` (section 4C): ``y = Coord(CA(x))``; ``out = x + alpha_eff * (y - x)``
  with ``alpha = sigmoid(alpha_raw)``. When training with ``monitor=True``:
  ``r_out = std(x + alpha * (y - x)) / std(x)`` (per-sample population std, batch mean, clamped to
  [0, 10]); ``r_ema <- m * r_ema + (1 - m) * r_out``; ``ratio = clamp(r_ema / r_min, 0, 1)``;
  ``"ratio_floor"``: ``alpha_eff = alpha * clamp(ratio, min_rescue_ratio, 1)``;
  ``"alpha_floor"``: ``alpha_eff = clamp(alpha * ratio, alpha_eff_min, 1)``.

Constructor arguments, defaults, parameter and buffer names are the notebook's, so a state dict
saved from the notebook's step-2 classes loads with ``strict=True`` and gives the same outputs.

Every mask is produced by the gate call itself (``torch.sigmoid`` / ``F.hardsigmoid``, looked up
at call time) and the scale built from it multiplies that module's input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from coordatt_diag.blocks.coordinate import HSwish, MaskStats, mask_stats

GateMode = Literal["sigmoid", "hardsigmoid"]
MonitorStats = dict[str, float | str]
"""``monitor_stats`` of ``CBAMChannelPlusCoord`` (section 8 of the notebook lists the keys)."""

CAOutput = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
BlockMaps = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, MaskStats | None, MonitorStats | None]


def softplus_inverse(y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of softplus, ``log(max(exp(y) - 1, eps))`` (seed 001 section 7).

    Args:
        y: Target softplus output.
        eps: Floor inside the log.

    Returns:
        ``x`` with ``softplus(x) == y``.
    """
    return torch.log(torch.clamp(torch.exp(y) - 1.0, min=eps))


def _check_gate(gate: str) -> GateMode:
    g = gate.lower()
    if g == "sigmoid":
        return "sigmoid"
    if g == "hardsigmoid":
        return "hardsigmoid"
    raise ValueError("gate must be 'sigmoid' or 'hardsigmoid'")


def _get_act(act: str) -> nn.Module:
    # The notebook uses inplace=True; the numbers are the same, and non-inplace keeps the
    # inputs intact for forward hooks.
    a = act.lower()
    if a == "relu":
        return nn.ReLU(inplace=False)
    if a == "silu":
        return nn.SiLU(inplace=False)
    raise ValueError("act must be 'relu' or 'silu'")


def make_norm(norm: str, ch: int) -> nn.Module:
    """Norm layer of the step-2 bottleneck (seed 001 section 7).

    Args:
        norm: ``"bn"`` (BatchNorm2d), ``"gn"`` (GroupNorm with up to 32 groups dividing ``ch``) or
            ``"none"`` (Identity).
        ch: Channels.

    Returns:
        The layer.
    """
    norm = norm.lower()
    if norm == "bn":
        return nn.BatchNorm2d(ch)
    if norm == "gn":
        g = min(32, ch)
        while ch % g != 0 and g > 2:
            g //= 2
        if ch % g != 0:
            g = 2 if (ch % 2 == 0) else 1
        return nn.GroupNorm(g, ch)
    if norm == "none":
        return nn.Identity()
    raise ValueError("norm must be 'none', 'bn' or 'gn'")


class ChannelAttentionFusionT(nn.Module):
    """CBAM-style channel attention with fusion router and temperature (seed 001, step 2).

    Args:
        channels: Channels ``C``.
        reduction: MLP reduction; ``hidden = max(min_hidden, C // reduction)``.
        min_hidden: Lower bound of the MLP width.
        fusion: ``"sum"`` (``z = a + m``) or ``"softmax"`` (router weights ``fusion_w``).
        gate: ``"sigmoid"`` or ``"hardsigmoid"`` for ``ca = gate(z / T)``.
        temperature: Initial (learnable) or fixed temperature ``T``.
        learnable_temperature: Learn ``T = softplus(t_raw) + eps`` instead of the buffer ``T``.
        eps: Small constant of the temperature parametrisation.
        act: MLP activation, ``"relu"`` or ``"silu"``.
        bias: Bias in ``fc1`` / ``fc2``.
        fusion_router_hidden: Hidden width of the router.
        return_fusion_weights: Return ``(y, ca, fusion_w)`` instead of ``(y, ca)``.
        t_min: Lower clamp of ``T``.
        t_max: Upper clamp of ``T``.
        router_temperature: ``Tr`` in ``softmax(logits / Tr)``.
        beta_ca: Softness of the channel scale, ``y = x * (1 + beta_ca * (ca - 1))``.

    Example:
        >>> ca = ChannelAttentionFusionT(64, return_fusion_weights=True)
        >>> y, ca_map, fusion_w = ca(torch.randn(2, 64, 32, 32))  # ca_map (2,64,1,1), w (2,2)
    """

    T: torch.Tensor
    t_raw: nn.Parameter

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_hidden: int = 4,
        fusion: str = "softmax",
        gate: str = "sigmoid",
        temperature: float = 0.9,
        learnable_temperature: bool = False,
        eps: float = 1e-6,
        act: str = "relu",
        bias: bool = True,
        fusion_router_hidden: int = 16,
        return_fusion_weights: bool = False,
        t_min: float = 0.5,
        t_max: float = 3.0,
        router_temperature: float = 1.5,
        beta_ca: float = 0.35,
    ) -> None:
        super().__init__()

        if channels < 1:
            raise ValueError("channels must be >= 1")
        if reduction < 1:
            raise ValueError("reduction must be >= 1")
        if fusion not in ("sum", "softmax"):
            raise ValueError("fusion must be 'sum' or 'softmax'")
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        if fusion == "softmax" and fusion_router_hidden < 1:
            raise ValueError("fusion_router_hidden must be >= 1")
        if t_min <= 0 or t_max <= 0 or t_min > t_max:
            raise ValueError("invalid T clamp range (need 0 < t_min <= t_max)")
        if router_temperature <= 0:
            raise ValueError("router_temperature must be positive")
        if beta_ca < 0:
            raise ValueError("beta_ca must be >= 0")

        self.eps = float(eps)
        self.fusion = fusion
        self.return_fusion_weights = bool(return_fusion_weights)
        self.gate: GateMode = _check_gate(gate)

        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.Tr = float(router_temperature)
        self.beta_ca = float(beta_ca)

        hidden = max(int(min_hidden), int(channels) // int(reduction))
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.act = _get_act(act)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

        self.fusion_router: nn.Sequential | None
        if self.fusion == "softmax":
            self.fusion_router = nn.Sequential(
                nn.Conv2d(2 * channels, fusion_router_hidden, kernel_size=1, bias=True),
                nn.ReLU(inplace=False),
                nn.Conv2d(fusion_router_hidden, 2, kernel_size=1, bias=True),
            )
            last = self.fusion_router[-1]
            assert isinstance(last, nn.Conv2d)
            nn.init.zeros_(last.weight)
            assert last.bias is not None
            nn.init.zeros_(last.bias)
        else:
            self.fusion_router = None

        self.learnable_temperature = bool(learnable_temperature)
        if self.learnable_temperature:
            # Step 2: start t_raw from the temperature clamped just inside [t_min, t_max].
            t0 = float(temperature)
            lo = self.t_min + self.eps
            hi = self.t_max - self.eps
            if lo >= hi:
                lo = self.t_min
                hi = self.t_max
            t0 = min(max(t0, lo), hi)
            self.t_raw = nn.Parameter(softplus_inverse(torch.tensor(t0), eps=self.eps))
        else:
            self.register_buffer("T", torch.tensor(float(temperature)))

    @property
    def gate_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The gate function (``torch.sigmoid`` or ``F.hardsigmoid``), as in the notebook."""
        return torch.sigmoid if self.gate == "sigmoid" else F.hardsigmoid

    def get_T(self, x: torch.Tensor) -> torch.Tensor:
        """Temperature on ``x``'s device and dtype, clamped to ``[t_min, t_max]``.

        Args:
            x: Reference tensor for device and dtype.

        Returns:
            The scalar temperature.
        """
        t = F.softplus(self.t_raw) + self.eps if self.learnable_temperature else self.T
        t = t.to(device=x.device, dtype=x.dtype)
        return t.clamp(self.t_min, self.t_max)

    def mlp(self, s: torch.Tensor) -> torch.Tensor:
        """The shared MLP ``fc2(act(fc1(s)))``."""
        return self.fc2(self.act(self.fc1(s)))

    def forward(self, x: torch.Tensor) -> CAOutput:
        """Apply the channel attention.

        Args:
            x: Input (B, C, H, W).

        Returns:
            ``(y, ca)`` or, with ``return_fusion_weights``, ``(y, ca, fusion_w)``: ``y`` (B,C,H,W),
            the channel mask ``ca`` (B,C,1,1), ``fusion_w`` (B,2) or ``None`` with ``"sum"``.
        """
        avg_s = self.avg_pool(x)
        max_s = self.max_pool(x)

        a = self.mlp(avg_s)
        m = self.mlp(max_s)

        fusion_w = None
        if self.fusion_router is None:
            z = a + m
        else:
            s_cat = torch.cat([avg_s, max_s], dim=1)
            logits = self.fusion_router(s_cat).flatten(1)  # (B,2)
            fusion_w = torch.softmax(logits / self.Tr, dim=1)
            w0 = fusion_w[:, 0].view(-1, 1, 1, 1)
            w1 = fusion_w[:, 1].view(-1, 1, 1, 1)
            z = w0 * a + w1 * m

        t = self.get_T(x)
        if self.gate == "hardsigmoid":
            ca = F.hardsigmoid(z / t, inplace=False)  # (B,C,1,1)
        else:
            ca = torch.sigmoid(z / t)  # (B,C,1,1)

        scale_ca = 1.0 + self.beta_ca * (ca - 1.0)
        y = x * scale_ca

        if self.return_fusion_weights:
            return y, ca, fusion_w
        return y, ca


class CoordinateAttPlus(nn.Module):
    """Strengthened Coordinate Attention of seed 001, step 2.

    Args:
        in_channels: Channels ``C``.
        reduction: Bottleneck reduction; ``mid = max(min_mid_channels, C // reduction,
            max(8, min(32, C // 4)))``.
        min_mid_channels: Lower bound of the bottleneck width.
        act: ``"hswish"``, ``"relu"`` or ``"silu"``.
        init_alpha: Initial ``alpha_h = alpha_w = sigmoid(raw)``.
        learnable_alpha: ``alpha_h_raw`` / ``alpha_w_raw`` are parameters (else buffers).
        beta: Softness, ``scale = 1 + beta * (scale_h * scale_w - 1)``.
        dilation: Dilation of the dilated depthwise convs.
        norm: Bottleneck norm, ``"bn"``, ``"gn"`` or ``"none"``.
        use_spatial_gate: Add the hard-sigmoid spatial gate.
        spatial_gate_beta: Softness of the spatial gate.
        scale_min: Lower clamp of ``scale``.
        scale_max: Upper clamp of ``scale``.
        head_init_std: Std of the normal init of the attention heads (bias 0).

    Attributes:
        _last_ah: The last height mask ``attn_h`` (B,C,H,1), detached.
        _last_aw: The last width mask ``attn_w`` (B,C,1,W), detached.

    Example:
        >>> coord = CoordinateAttPlus(64)
        >>> out = coord(torch.randn(2, 64, 32, 32))
    """

    alpha_h_raw: torch.Tensor
    alpha_w_raw: torch.Tensor
    spatial_gate_dw: nn.Conv2d
    spatial_gate_pw: nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        init_alpha: float = 0.7,
        learnable_alpha: bool = True,
        beta: float = 0.35,
        dilation: int = 2,
        norm: str = "gn",
        use_spatial_gate: bool = False,
        spatial_gate_beta: float = 0.35,
        scale_min: float = 0.6,
        scale_max: float = 1.6,
        head_init_std: float = 0.01,
    ) -> None:
        super().__init__()

        if in_channels < 1:
            raise ValueError("in_channels must be >= 1")
        if reduction < 1:
            raise ValueError("reduction must be >= 1")
        if dilation < 1:
            raise ValueError("dilation must be >= 1")
        if scale_min <= 0 or scale_max <= 0 or scale_min > scale_max:
            raise ValueError("invalid scale clamp range (need 0 < scale_min <= scale_max)")
        if head_init_std <= 0:
            raise ValueError("head_init_std must be positive")

        self.beta = float(beta)
        self.scale_min = float(scale_min)
        self.scale_max = float(scale_max)

        mid_floor = max(8, min(32, int(in_channels) // 4))
        mid = max(int(min_mid_channels), int(in_channels) // int(reduction))
        mid = max(mid, int(mid_floor))

        self.act: nn.Module
        act_l = act.lower()
        if act_l == "hswish":
            self.act = HSwish()
        elif act_l == "relu":
            self.act = nn.ReLU(inplace=False)
        elif act_l == "silu":
            self.act = nn.SiLU(inplace=False)
        else:
            raise ValueError("act must be 'hswish', 'relu' or 'silu'")

        self.shared_bottleneck_proj = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.shared_bottleneck_norm = make_norm(norm, mid)
        self.shared_bottleneck_refine = nn.Conv2d(mid, mid, 1, bias=False)
        self.shared_bottleneck_refine_norm = make_norm(norm, mid)

        c = in_channels
        self.h_local_dw = nn.Conv2d(c, c, (3, 1), padding=(1, 0), groups=c, bias=False)
        self.w_local_dw = nn.Conv2d(c, c, (1, 3), padding=(0, 1), groups=c, bias=False)

        d = int(dilation)
        self.h_dilated_dw = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1), groups=c, bias=False)
        self.w_dilated_dw = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d), groups=c, bias=False)

        self.h_channel_mixer = nn.Conv2d(c, c, 1, bias=True)
        self.w_channel_mixer = nn.Conv2d(c, c, 1, bias=True)

        self.h_attention_head = nn.Conv2d(mid, c, 1, bias=True)
        self.w_attention_head = nn.Conv2d(mid, c, 1, bias=True)

        #: the init of the weights that do not keep PyTorch's default (read by the untrained check)
        self.weight_init_std = {"h_attention_head.weight": float(head_init_std),
                                "w_attention_head.weight": float(head_init_std)}
        for head in (self.h_attention_head, self.w_attention_head):
            nn.init.normal_(head.weight, mean=0.0, std=float(head_init_std))
            if head.bias is not None:
                nn.init.zeros_(head.bias)

        eps = 1e-6
        a0 = min(max(float(init_alpha), eps), 1.0 - eps)
        raw0 = torch.logit(torch.tensor(a0), eps=eps)
        for name in ("alpha_h_raw", "alpha_w_raw"):
            if learnable_alpha:
                self.register_parameter(name, nn.Parameter(raw0.clone()))
            else:
                self.register_buffer(name, raw0.clone())

        self.use_spatial_gate = bool(use_spatial_gate)
        self.spatial_gate_beta = float(spatial_gate_beta)
        if self.use_spatial_gate:
            self.spatial_gate_dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            self.spatial_gate_pw = nn.Conv2d(c, c, 1, bias=True)

        self._last_ah: torch.Tensor | None = None
        self._last_aw: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Input (B, C, H, W).

        Returns:
            ``x * scale`` (times the soft spatial gate if enabled), shape (B, C, H, W).
        """
        _, _, h, w = x.shape

        h_profile = 0.5 * (x.mean(dim=3, keepdim=True) + x.amax(dim=3, keepdim=True))  # (B,C,H,1)
        w_profile = 0.5 * (x.mean(dim=2, keepdim=True) + x.amax(dim=2, keepdim=True))  # (B,C,1,W)

        h_ms = self.h_channel_mixer(self.h_local_dw(h_profile) + self.h_dilated_dw(h_profile))
        w_ms = self.w_channel_mixer(self.w_local_dw(w_profile) + self.w_dilated_dw(w_profile))
        w_ms = w_ms.permute(0, 1, 3, 2)  # (B,C,W,1)

        hw = torch.cat([h_ms, w_ms], dim=2)  # (B,C,H+W,1)

        mid = self.act(self.shared_bottleneck_norm(self.shared_bottleneck_proj(hw)))
        mid = self.act(self.shared_bottleneck_refine_norm(self.shared_bottleneck_refine(mid)))

        mid_h, mid_w = torch.split(mid, [h, w], dim=2)
        mid_w = mid_w.permute(0, 1, 3, 2)

        attn_h = F.hardsigmoid(self.h_attention_head(mid_h), inplace=False)  # (B,C,H,1)
        attn_w = F.hardsigmoid(self.w_attention_head(mid_w), inplace=False)  # (B,C,1,W)

        self._last_ah = attn_h.detach()
        self._last_aw = attn_w.detach()

        alpha_h = torch.sigmoid(self.alpha_h_raw).to(device=x.device, dtype=x.dtype)
        alpha_w = torch.sigmoid(self.alpha_w_raw).to(device=x.device, dtype=x.dtype)

        scale_h = (1.0 - alpha_h) + alpha_h * attn_h
        scale_w = (1.0 - alpha_w) + alpha_w * attn_w

        scale = scale_h * scale_w
        scale = 1.0 + self.beta * (scale - 1.0)
        scale = scale.clamp(self.scale_min, self.scale_max)

        out = x * scale

        if self.use_spatial_gate:
            sg = self.spatial_gate_pw(self.spatial_gate_dw(x))
            sg = F.hardsigmoid(sg, inplace=False)  # (B,C,H,W)
            sg = 1.0 + self.spatial_gate_beta * (sg - 1.0)
            out = out * sg

        return out

    @torch.no_grad()
    def last_mask_stats(self) -> MaskStats | None:
        """Min / mean / max / std (unbiased) of the last ``attn_h`` and ``attn_w``.

        Returns:
            ``{"a_h": {...}, "a_w": {...}}``, or ``None`` before the first forward.
        """
        if self._last_ah is None or self._last_aw is None:
            return None
        return mask_stats(self._last_ah, self._last_aw)


class CBAMChannelPlusCoord(nn.Module):
    """Channel attention followed by Coordinate Attention, with monitor and rescue (step 2).

    ``y = coord(ca(x))``; with ``residual``, ``out = x + alpha_eff * (y - x)``,
    ``alpha = sigmoid(alpha_raw)``. In training with ``monitor=True`` the block measures
    ``r_out = std(x + alpha * (y - x)) / std(x)``, keeps its EMA in the buffer ``r_ema`` and
    lowers ``alpha_eff`` below ``alpha`` when ``r_ema < r_min``.

    Args:
        channels: Channels ``C``.
        ca_reduction: ``ChannelAttentionFusionT.reduction``.
        ca_min_hidden: ``ChannelAttentionFusionT.min_hidden``.
        ca_fusion: ``ChannelAttentionFusionT.fusion``.
        ca_gate: ``ChannelAttentionFusionT.gate``.
        ca_temperature: ``ChannelAttentionFusionT.temperature``.
        ca_act: ``ChannelAttentionFusionT.act``.
        ca_fusion_router_hidden: ``ChannelAttentionFusionT.fusion_router_hidden``.
        learnable_temperature: ``ChannelAttentionFusionT.learnable_temperature``.
        ca_t_min: ``ChannelAttentionFusionT.t_min``.
        ca_t_max: ``ChannelAttentionFusionT.t_max``.
        ca_router_temperature: ``ChannelAttentionFusionT.router_temperature``.
        beta_ca: ``ChannelAttentionFusionT.beta_ca``.
        coord_reduction: ``CoordinateAttPlus.reduction``.
        coord_min_mid: ``CoordinateAttPlus.min_mid_channels``.
        coord_act: ``CoordinateAttPlus.act``.
        coord_init_alpha: ``CoordinateAttPlus.init_alpha``.
        coord_learnable_alpha: ``CoordinateAttPlus.learnable_alpha``.
        coord_beta: ``CoordinateAttPlus.beta``.
        coord_dilation: ``CoordinateAttPlus.dilation``.
        coord_norm: ``CoordinateAttPlus.norm``.
        coord_use_spatial_gate: ``CoordinateAttPlus.use_spatial_gate``.
        coord_spatial_gate_beta: ``CoordinateAttPlus.spatial_gate_beta``.
        coord_scale_min: ``CoordinateAttPlus.scale_min``.
        coord_scale_max: ``CoordinateAttPlus.scale_max``.
        coord_head_init_std: ``CoordinateAttPlus.head_init_std``.
        residual: Mix the output with the input, ``x + alpha_eff * (y - x)``.
        alpha_init: Initial ``alpha = sigmoid(alpha_raw)``.
        learnable_alpha: ``alpha_raw`` is a parameter (else a buffer).
        monitor: Measure ``r_out`` and update ``r_ema`` / ``alpha_eff`` in training mode.
        r_min: Ratio under which the rescue engages.
        ema_momentum: Momentum ``m`` of ``r_ema``.
        min_rescue_ratio: Floor of ``ratio`` in ``"ratio_floor"`` mode.
        alpha_eff_min: Floor of ``alpha_eff`` in ``"alpha_floor"`` mode.
        rescue_mode: ``"ratio_floor"`` or ``"alpha_floor"`` (more aggressive).
        return_maps: Return ``(out, ca_map, fusion_w, coord_stats, monitor_stats)``.

    Example:
        >>> block = CBAMChannelPlusCoord(64, monitor=True, return_maps=True).train()
        >>> out, ca_map, fusion_w, coord_stats, monitor_stats = block(torch.randn(2, 64, 32, 32))
    """

    alpha_raw: torch.Tensor
    r_ema: torch.Tensor

    def __init__(
        self,
        channels: int,
        ca_reduction: int = 16,
        ca_min_hidden: int = 4,
        ca_fusion: str = "softmax",
        ca_gate: str = "sigmoid",
        ca_temperature: float = 0.9,
        ca_act: str = "relu",
        ca_fusion_router_hidden: int = 16,
        learnable_temperature: bool = False,
        ca_t_min: float = 0.5,
        ca_t_max: float = 3.0,
        ca_router_temperature: float = 1.5,
        beta_ca: float = 0.35,
        coord_reduction: int = 32,
        coord_min_mid: int = 8,
        coord_act: str = "hswish",
        coord_init_alpha: float = 0.7,
        coord_learnable_alpha: bool = True,
        coord_beta: float = 0.35,
        coord_dilation: int = 2,
        coord_norm: str = "gn",
        coord_use_spatial_gate: bool = False,
        coord_spatial_gate_beta: float = 0.35,
        coord_scale_min: float = 0.6,
        coord_scale_max: float = 1.6,
        coord_head_init_std: float = 0.01,
        residual: bool = True,
        alpha_init: float = 0.75,
        learnable_alpha: bool = False,
        monitor: bool = False,
        r_min: float = 0.45,
        ema_momentum: float = 0.95,
        min_rescue_ratio: float = 0.2,
        alpha_eff_min: float = 0.2,
        rescue_mode: str = "ratio_floor",
        return_maps: bool = False,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError("channels must be >= 1")
        if not (0.0 < ema_momentum < 1.0):
            raise ValueError("ema_momentum must be in (0, 1)")
        if r_min <= 0:
            raise ValueError("r_min must be positive")
        if not (0.0 <= min_rescue_ratio <= 1.0):
            raise ValueError("min_rescue_ratio must be in [0, 1]")
        if not (0.0 <= alpha_eff_min <= 1.0):
            raise ValueError("alpha_eff_min must be in [0, 1]")
        if rescue_mode not in ("ratio_floor", "alpha_floor"):
            raise ValueError("rescue_mode must be 'ratio_floor' or 'alpha_floor'")

        self.return_maps = bool(return_maps)
        self.residual = bool(residual)

        self.monitor = bool(monitor)
        self.r_min = float(r_min)
        self.ema_m = float(ema_momentum)
        self.min_rescue_ratio = float(min_rescue_ratio)
        self.alpha_eff_min = float(alpha_eff_min)
        self.rescue_mode = str(rescue_mode)

        self.ca = ChannelAttentionFusionT(
            channels=channels,
            reduction=ca_reduction,
            min_hidden=ca_min_hidden,
            fusion=ca_fusion,
            gate=ca_gate,
            temperature=ca_temperature,
            learnable_temperature=learnable_temperature,
            eps=1e-6,
            act=ca_act,
            bias=True,
            fusion_router_hidden=ca_fusion_router_hidden,
            return_fusion_weights=self.return_maps,
            t_min=ca_t_min,
            t_max=ca_t_max,
            router_temperature=ca_router_temperature,
            beta_ca=beta_ca,
        )

        self.coord = CoordinateAttPlus(
            in_channels=channels,
            reduction=coord_reduction,
            min_mid_channels=coord_min_mid,
            act=coord_act,
            init_alpha=coord_init_alpha,
            learnable_alpha=coord_learnable_alpha,
            beta=coord_beta,
            dilation=coord_dilation,
            norm=coord_norm,
            use_spatial_gate=coord_use_spatial_gate,
            spatial_gate_beta=coord_spatial_gate_beta,
            scale_min=coord_scale_min,
            scale_max=coord_scale_max,
            head_init_std=coord_head_init_std,
        )

        if self.residual:
            eps = 1e-6
            a0 = min(max(float(alpha_init), eps), 1.0 - eps)
            raw0 = torch.logit(torch.tensor(a0), eps=eps)
            if learnable_alpha:
                self.alpha_raw = nn.Parameter(raw0)
            else:
                self.register_buffer("alpha_raw", raw0)

        self.register_buffer("r_ema", torch.tensor(1.0))

    def _alpha(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.residual) or (not hasattr(self, "alpha_raw")):
            return x.new_tensor(1.0)
        return torch.sigmoid(self.alpha_raw).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def _std_per_sample(x: torch.Tensor) -> torch.Tensor:
        # Population std (unbiased=False) per sample, averaged over the batch.
        return x.float().flatten(1).std(dim=1, correction=0).mean()

    @torch.no_grad()
    def _update_r_ema(self, r_out: torch.Tensor) -> None:
        r_det = r_out.detach().to(device=self.r_ema.device, dtype=self.r_ema.dtype)
        self.r_ema.mul_(self.ema_m).add_((1.0 - self.ema_m) * r_det)

    def _compute_alpha_eff(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ratio = (self.r_ema.detach() / max(self.r_min, 1e-12)).clamp(0.0, 1.0)
        ratio = ratio.to(device=x.device, dtype=x.dtype)

        if self.rescue_mode == "ratio_floor":
            ratio = ratio.clamp(self.min_rescue_ratio, 1.0)
            return alpha * ratio

        alpha_eff = alpha * ratio
        return alpha_eff.clamp(self.alpha_eff_min, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | BlockMaps:
        """Apply the block.

        Args:
            x: Input (B, C, H, W).

        Returns:
            ``out`` (B,C,H,W), or with ``return_maps`` the tuple
            ``(out, ca_map (B,C,1,1), fusion_w (B,2) | None, coord_stats, monitor_stats | None)``;
            ``monitor_stats`` is ``None`` unless training with ``monitor`` and ``residual``.
        """
        ca_out = self.ca(x)
        y_ca, ca_map = ca_out[0], ca_out[1]
        fusion_w = ca_out[2] if len(ca_out) > 2 else None
        y = self.coord(y_ca)

        if not self.residual:
            if self.return_maps:
                return y, ca_map, fusion_w, self.coord.last_mask_stats(), None
            return y

        alpha = self._alpha(x)
        alpha_eff = alpha
        monitor_stats: MonitorStats | None = None

        if self.training and self.monitor:
            x_std = self._std_per_sample(x)
            out_tmp = x + alpha * (y - x)
            out_std = self._std_per_sample(out_tmp)
            r_out = (out_std / (x_std + 1e-12)).clamp(0.0, 10.0)

            self._update_r_ema(r_out)
            alpha_eff = self._compute_alpha_eff(x, alpha)

            if self.return_maps:
                y_std = self._std_per_sample(y)
                r_block = (y_std / (x_std + 1e-12)).clamp(0.0, 10.0)
                monitor_stats = {
                    "x_std": float(x_std.detach()),
                    "y_std": float(y_std.detach()),
                    "out_std_pre": float(out_std.detach()),
                    "r_block": float(r_block.detach()),
                    "r_out_pre": float(r_out.detach()),
                    "r_ema": float(self.r_ema.detach()),
                    "alpha": float(alpha.detach()),
                    "alpha_eff": float(alpha_eff.detach()),
                    "rescue_mode": self.rescue_mode,
                }

        out = x + alpha_eff * (y - x)
        if self.return_maps:
            return out, ca_map, fusion_w, self.coord.last_mask_stats(), monitor_stats
        return out
