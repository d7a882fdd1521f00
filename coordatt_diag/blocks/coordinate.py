"""Coordinate Attention (``CoordinateAtt``) with the nine add-ons of seed notebook 000.

Every formula here comes from ``/work/shared/seeds/000_14b362d4935c611d.txt`` ("Coordinate
Attention strengthening add-ons"):

- Section 0, the reference block, is what the constructor defaults reproduce::

      x_h   = mean_W(x)                                  (B,C,H,1)
      x_w   = mean_H(x), permuted                        (B,C,W,1)
      y     = act(bn1(conv1(cat[x_h, x_w])))             (B,mid,H+W,1), mid = max(min_mid, C // r)
      a_h   = sigmoid(conv_h(y_h))                       (B,C,H,1)
      a_w   = sigmoid(conv_w(y_w^T))                     (B,C,1,W)
      scale = (1 - alpha) + alpha * a_h * a_w
      out   = x * scale

- Section 1 (``pool="meanmax"``): the axis profiles become ``0.5 * (mean + amax)``.
- Section 2 (``axis_dw=True``): depthwise ``dw_h`` (3,1) on x_h and ``dw_w`` (1,3) on x_w (in its
  (B,C,1,W) layout), after pooling and before the concatenation.
- Section 3 (``dilation=d``): the same depthwise convs with dilation ``d`` and padding ``d``;
  ``dilation > 1`` switches ``axis_dw`` on.
- Section 4 (``per_axis_alpha=True``): buffers (or parameters) ``alpha_h`` / ``alpha_w`` instead of
  ``alpha``; ``scale = ((1 - alpha_h) + alpha_h * a_h) * ((1 - alpha_w) + alpha_w * a_w)``.
- Section 5 (``gate="hardsigmoid"``): ``F.hardsigmoid`` instead of ``torch.sigmoid`` for a_h, a_w.
- Section 6 (``att_residual_beta=beta``): ``att = 1 + beta * (a_h * a_w - 1)`` before the alpha
  mix. Combined with section 4 (not covered by the notebook) the residual is applied to the
  per-axis product, ``scale = 1 + beta * (scale_h * scale_w - 1)``, the order the user's own
  ``CoordinateAttPlus`` (seed 001) uses.
- Section 7 (``bottleneck_layers=2``): ``conv1a``/``bn1a``/act then ``conv1b``/``bn1b``/act instead
  of ``conv1``/``bn1``/act.
- Section 8 (``head_groups=g``): ``conv_h`` / ``conv_w`` are grouped 1x1 convs.
- Section 9 (``spatial_gate=True``): ``out = out * sigmoid(spatial_pw(spatial_dw(out)))`` after the
  coordinate scaling (always a sigmoid: the notebook's section 5 only changes a_h / a_w).

Parameter and buffer names are the notebook's, so a state dict saved from the notebook's class
(reference or with an add-on applied) loads with ``strict=True`` and gives the same outputs.

The masks are produced by the gate call itself (``torch.sigmoid`` / ``F.hardsigmoid``) and the
scale built from them multiplies the block input ``x``; diagnostics that intercept gate calls
rely on this.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

MaskStats = dict[str, dict[str, float]]
"""``{"a_h": {"min","mean","max","std"}, "a_w": {...}}`` as returned by ``last_mask_stats()``."""

PoolMode = Literal["mean", "meanmax"]
GateMode = Literal["sigmoid", "hardsigmoid"]


class HSwish(nn.Module):
    """Hard-swish activation of seed 000 section 0: ``x * relu6(x + 3) / 6``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0, inplace=True) / 6.0


def mask_stats(a_h: torch.Tensor, a_w: torch.Tensor) -> MaskStats:
    """Summary of two masks as in seed 000 section 0 (``torch.std``: unbiased).

    Args:
        a_h: The height mask.
        a_w: The width mask.

    Returns:
        ``{"a_h": {"min", "mean", "max", "std"}, "a_w": {...}}`` with Python floats.
    """
    with torch.no_grad():
        return {
            name: {
                "min": float(a.min()),
                "mean": float(a.mean()),
                "max": float(a.max()),
                "std": float(a.std()),
            }
            for name, a in (("a_h", a_h), ("a_w", a_w))
        }


class CoordinateAtt(nn.Module):
    """Coordinate Attention block of seed 000, with add-ons 1-9 as options.

    With the default options the block is the notebook's reference ``CoordinateAtt`` (section 0).
    Each keyword-only option switches on one add-on of sections 1-9; options can be combined.

    Args:
        in_channels: Channels ``C`` of the input (and output).
        reduction: Bottleneck reduction; ``mid = max(min_mid_channels, C // reduction)``.
        min_mid_channels: Lower bound of the bottleneck width.
        act: Bottleneck activation, ``"hswish"`` or ``"relu"``.
        alpha: Initial mixing weight in ``scale = (1 - alpha) + alpha * att``.
        learnable_alpha: Make ``alpha`` (or ``alpha_h`` / ``alpha_w``) a parameter instead of a
            buffer.
        pool: Add-on 1. ``"mean"`` (reference) or ``"meanmax"`` (``0.5 * (mean + amax)``).
        axis_dw: Add-on 2. Depthwise (3,1) / (1,3) convs ``dw_h`` / ``dw_w`` on the axis profiles.
        dilation: Add-on 3. Dilation of ``dw_h`` / ``dw_w``; a value above 1 implies ``axis_dw``.
        per_axis_alpha: Add-on 4. Separate ``alpha_h`` / ``alpha_w`` instead of ``alpha``.
        gate: Add-on 5. ``"sigmoid"`` (reference) or ``"hardsigmoid"`` for ``a_h`` / ``a_w``.
        att_residual_beta: Add-on 6. If set, ``att = 1 + beta * (a_h * a_w - 1)``
            (the notebook suggests 0.2-1.0).
        bottleneck_layers: Add-on 7. ``1`` (``conv1``/``bn1``) or ``2`` (``conv1a``/``bn1a``,
            ``conv1b``/``bn1b``).
        head_groups: Add-on 8. Groups of the 1x1 heads ``conv_h`` / ``conv_w``; must divide both
            ``in_channels`` and the bottleneck width.
        spatial_gate: Add-on 9. Multiply the output by ``sigmoid(spatial_pw(spatial_dw(out)))``.

    Attributes:
        _last_ah: The last height mask ``a_h`` (B,C,H,1), kept with its graph as in the notebook.
        _last_aw: The last width mask ``a_w`` (B,C,1,W).

    Example:
        >>> att = CoordinateAtt(64, pool="meanmax", gate="hardsigmoid", att_residual_beta=0.5)
        >>> out = att(torch.randn(2, 64, 32, 32))
    """

    # Attributes that exist only with some options (declared for the type checker).
    alpha: torch.Tensor
    alpha_h: torch.Tensor
    alpha_w: torch.Tensor
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    conv1a: nn.Conv2d
    bn1a: nn.BatchNorm2d
    conv1b: nn.Conv2d
    bn1b: nn.BatchNorm2d
    dw_h: nn.Conv2d
    dw_w: nn.Conv2d
    spatial_dw: nn.Conv2d
    spatial_pw: nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
        *,
        pool: PoolMode = "mean",
        axis_dw: bool = False,
        dilation: int = 1,
        per_axis_alpha: bool = False,
        gate: GateMode = "sigmoid",
        att_residual_beta: float | None = None,
        bottleneck_layers: int = 1,
        head_groups: int = 1,
        spatial_gate: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError("in_channels must be >= 1")
        if reduction < 1:
            raise ValueError("reduction must be >= 1")
        if pool not in ("mean", "meanmax"):
            raise ValueError("pool must be 'mean' or 'meanmax'")
        if dilation < 1:
            raise ValueError("dilation must be >= 1")
        if gate not in ("sigmoid", "hardsigmoid"):
            raise ValueError("gate must be 'sigmoid' or 'hardsigmoid'")
        if bottleneck_layers not in (1, 2):
            raise ValueError("bottleneck_layers must be 1 or 2")
        mid_channels = max(min_mid_channels, in_channels // reduction)
        if head_groups < 1 or in_channels % head_groups or mid_channels % head_groups:
            raise ValueError(
                f"head_groups={head_groups} must divide in_channels={in_channels} "
                f"and the bottleneck width {mid_channels}"
            )

        self.in_channels = int(in_channels)
        self.mid_channels = int(mid_channels)
        self.pool: PoolMode = pool
        self.dilation = int(dilation)
        self.axis_dw = bool(axis_dw) or self.dilation > 1
        self.per_axis_alpha = bool(per_axis_alpha)
        self.gate: GateMode = gate
        self.beta: float | None = None if att_residual_beta is None else float(att_residual_beta)
        self.bottleneck_layers = int(bottleneck_layers)
        self.head_groups = int(head_groups)
        self.spatial_gate = bool(spatial_gate)

        # Section 0 / add-on 7: the shared bottleneck.
        if self.bottleneck_layers == 1:
            self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid_channels)
        else:
            self.conv1a = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
            self.bn1a = nn.BatchNorm2d(mid_channels)
            self.conv1b = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
            self.bn1b = nn.BatchNorm2d(mid_channels)

        self.act: nn.Module
        if act.lower() == "hswish":
            self.act = HSwish()
        elif act.lower() == "relu":
            # The notebook uses inplace=True; the numbers are the same, and non-inplace keeps
            # the output of bn1 intact for forward hooks.
            self.act = nn.ReLU(inplace=False)
        else:
            raise ValueError("act must be 'hswish' or 'relu'")

        # Section 0 / add-on 8: the two heads.
        self.conv_h = nn.Conv2d(mid_channels, in_channels, kernel_size=1, groups=self.head_groups, bias=True)
        self.conv_w = nn.Conv2d(mid_channels, in_channels, kernel_size=1, groups=self.head_groups, bias=True)

        # Section 0 / add-on 4: the mixing weight(s).
        names = ("alpha_h", "alpha_w") if self.per_axis_alpha else ("alpha",)
        for name in names:
            if learnable_alpha:
                self.register_parameter(name, nn.Parameter(torch.tensor(float(alpha))))
            else:
                self.register_buffer(name, torch.tensor(float(alpha)))

        # Add-ons 2 and 3: depthwise convs along each axis.
        if self.axis_dw:
            d = self.dilation
            self.dw_h = nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size=(3, 1),
                padding=(d, 0),
                dilation=(d, 1),
                groups=in_channels,
                bias=False,
            )
            self.dw_w = nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size=(1, 3),
                padding=(0, d),
                dilation=(1, d),
                groups=in_channels,
                bias=False,
            )

        # Add-on 9: mini spatial gate.
        if self.spatial_gate:
            self.spatial_dw = nn.Conv2d(
                in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels, bias=False
            )
            self.spatial_pw = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=True)

        self._last_ah: torch.Tensor | None = None
        self._last_aw: torch.Tensor | None = None

    def _gate(self, z: torch.Tensor) -> torch.Tensor:
        """The mask gate: section 0 (sigmoid) or add-on 5 (hard-sigmoid)."""
        if self.gate == "hardsigmoid":
            return F.hardsigmoid(z, inplace=False)
        return torch.sigmoid(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Input of shape (B, C, H, W).

        Returns:
            ``x * scale`` (times the spatial gate with add-on 9), shape (B, C, H, W).
        """
        _, _, h, w = x.shape

        # Axis profiles: section 0 (mean) or add-on 1 (0.5 * (mean + amax)).
        if self.pool == "meanmax":
            x_h = 0.5 * (x.mean(dim=3, keepdim=True) + x.amax(dim=3, keepdim=True))  # (B,C,H,1)
            x_w = 0.5 * (x.mean(dim=2, keepdim=True) + x.amax(dim=2, keepdim=True))  # (B,C,1,W)
        else:
            x_h = x.mean(dim=3, keepdim=True)  # (B,C,H,1)
            x_w = x.mean(dim=2, keepdim=True)  # (B,C,1,W)

        # Add-ons 2/3: depthwise (dilated) conv along each axis.
        if self.axis_dw:
            x_h = self.dw_h(x_h)
            x_w = self.dw_w(x_w)
        x_w = x_w.permute(0, 1, 3, 2)  # (B,C,W,1)

        y = torch.cat([x_h, x_w], dim=2)  # (B,C,H+W,1)
        if self.bottleneck_layers == 1:
            y = self.act(self.bn1(self.conv1(y)))  # (B,mid,H+W,1)
        else:  # add-on 7
            y = self.act(self.bn1a(self.conv1a(y)))
            y = self.act(self.bn1b(self.conv1b(y)))

        y_h, y_w = torch.split(y, [h, w], dim=2)  # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0, 1, 3, 2)  # (B,mid,1,W)

        a_h = self._gate(self.conv_h(y_h))  # (B,C,H,1)
        a_w = self._gate(self.conv_w(y_w))  # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        if self.per_axis_alpha:  # add-on 4
            scale_h = (1.0 - self.alpha_h) + self.alpha_h * a_h  # (B,C,H,1)
            scale_w = (1.0 - self.alpha_w) + self.alpha_w * a_w  # (B,C,1,W)
            scale = scale_h * scale_w  # (B,C,H,W)
            if self.beta is not None:  # add-on 6 on the per-axis product
                scale = 1.0 + self.beta * (scale - 1.0)
        else:
            att = a_h * a_w  # (B,C,H,W)
            if self.beta is not None:  # add-on 6
                att = 1.0 + self.beta * (att - 1.0)
            scale = (1.0 - self.alpha) + self.alpha * att

        out = x * scale

        if self.spatial_gate:  # add-on 9
            gate = torch.sigmoid(self.spatial_pw(self.spatial_dw(out)))
            out = out * gate
        return out

    @torch.no_grad()
    def last_mask_stats(self) -> MaskStats | None:
        """Min / mean / max / std (unbiased) of the last ``a_h`` and ``a_w`` (seed 000 section 0).

        Returns:
            The statistics, or ``None`` before the first forward.
        """
        if self._last_ah is None or self._last_aw is None:
            return None
        return mask_stats(self._last_ah, self._last_aw)
