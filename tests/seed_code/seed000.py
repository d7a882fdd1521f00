"""Seed notebook 000 ("Coordinate Attention strengthening add-ons"), code extracted verbatim.

Source: /work/shared/seeds/000_14b362d4935c611d.txt.

- Section 0: the reference ``HSwish`` and ``CoordinateAtt`` (copied verbatim, lines 12-86).
- Sections 1-9: ``CoordinateAttAddonN`` is the reference class with the snippet of add-on N applied
  exactly where the notebook says ("forward icinde", "__init__ icine", "forward sonunda"). Each
  snippet is copied verbatim between ``# >>> add-on N`` / ``# <<< add-on N`` markers; the
  notebook's example constants are kept (add-on 3: d = 2, add-on 6: beta = 0.5, add-on 8: g = 4).
- Section 10: ``quick_mask_check`` (copied verbatim).

Test fixture only: not part of the package, excluded from ruff.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

class HSwish(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3.0, inplace=True) / 6.0

class CoordinateAtt(nn.Module):
    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__()
        mid_channels = max(min_mid_channels, in_channels // reduction)

        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)

        if act.lower() == "hswish":
            self.act = HSwish()
        elif act.lower() == "relu":
            self.act = nn.ReLU(inplace=True)
        else:
            raise ValueError("act must be 'hswish' or 'relu'")

        self.conv_h = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)
        self.conv_w = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)

        if learnable_alpha:
            self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha)))

        self._last_ah = None
        self._last_aw = None

    def forward(self, x):
        B, C, H, W = x.shape

        x_h = x.mean(dim=3, keepdim=True)                    # (B,C,H,1)
        x_w = x.mean(dim=2, keepdim=True).permute(0,1,3,2)   # (B,C,W,1)

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        y = self.act(self.bn1(self.conv1(y)))                # (B,mid,H+W,1)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        a_h = torch.sigmoid(self.conv_h(y_h))                # (B,C,H,1)
        a_w = torch.sigmoid(self.conv_w(y_w))                # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        att = a_h * a_w                                      # (B,C,H,W)
        scale = (1.0 - self.alpha) + self.alpha * att

        return x * scale

    @torch.no_grad()
    def last_mask_stats(self):
        if self._last_ah is None or self._last_aw is None:
            return None
        ah = self._last_ah
        aw = self._last_aw
        return {
            "a_h": {"min": float(ah.min()), "mean": float(ah.mean()), "max": float(ah.max()), "std": float(ah.std())},
            "a_w": {"min": float(aw.min()), "mean": float(aw.mean()), "max": float(aw.max()), "std": float(aw.std())},
        }


# ---------------------------------------------------------------------------------------------
# Add-ons 1-9: the reference class with one snippet applied (snippets verbatim between markers).
# ---------------------------------------------------------------------------------------------


class CoordinateAttAddon1(nn.Module):
    """Add-on 1: multi-scale axis pooling (mean + max)."""

    last_mask_stats = CoordinateAtt.last_mask_stats

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__()
        mid_channels = max(min_mid_channels, in_channels // reduction)

        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)

        if act.lower() == "hswish":
            self.act = HSwish()
        elif act.lower() == "relu":
            self.act = nn.ReLU(inplace=True)
        else:
            raise ValueError("act must be 'hswish' or 'relu'")

        self.conv_h = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)
        self.conv_w = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)

        if learnable_alpha:
            self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha)))

        self._last_ah = None
        self._last_aw = None

    def forward(self, x):
        B, C, H, W = x.shape

        # >>> add-on 1
        x_h_mean = x.mean(dim=3, keepdim=True)
        x_h_max  = x.amax(dim=3, keepdim=True)
        x_h = 0.5 * (x_h_mean + x_h_max)                           # (B,C,H,1)

        x_w_mean = x.mean(dim=2, keepdim=True)
        x_w_max  = x.amax(dim=2, keepdim=True)
        x_w = 0.5 * (x_w_mean + x_w_max)                           # (B,C,1,W)
        x_w = x_w.permute(0, 1, 3, 2)                              # (B,C,W,1)
        # <<< add-on 1

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        y = self.act(self.bn1(self.conv1(y)))                # (B,mid,H+W,1)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        a_h = torch.sigmoid(self.conv_h(y_h))                # (B,C,H,1)
        a_w = torch.sigmoid(self.conv_w(y_w))                # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        att = a_h * a_w                                      # (B,C,H,W)
        scale = (1.0 - self.alpha) + self.alpha * att

        return x * scale


class CoordinateAttAddon2(nn.Module):
    """Add-on 2: axis-wise depthwise conv on x_h / x_w."""

    last_mask_stats = CoordinateAtt.last_mask_stats

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__()
        mid_channels = max(min_mid_channels, in_channels // reduction)

        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)

        if act.lower() == "hswish":
            self.act = HSwish()
        elif act.lower() == "relu":
            self.act = nn.ReLU(inplace=True)
        else:
            raise ValueError("act must be 'hswish' or 'relu'")

        self.conv_h = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)
        self.conv_w = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)

        if learnable_alpha:
            self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha)))

        # >>> add-on 2 (__init__)
        self.dw_h = nn.Conv2d(in_channels, in_channels, kernel_size=(3,1), padding=(1,0), groups=in_channels, bias=False)
        self.dw_w = nn.Conv2d(in_channels, in_channels, kernel_size=(1,3), padding=(0,1), groups=in_channels, bias=False)
        # <<< add-on 2 (__init__)

        self._last_ah = None
        self._last_aw = None

    def forward(self, x):
        B, C, H, W = x.shape

        x_h = x.mean(dim=3, keepdim=True)                    # (B,C,H,1)
        x_w = x.mean(dim=2, keepdim=True).permute(0,1,3,2)   # (B,C,W,1)

        # >>> add-on 2 (forward)
        x_h = self.dw_h(x_h)                      # (B,C,H,1)

        x_w_1w = x_w.permute(0,1,3,2)             # (B,C,1,W)
        x_w_1w = self.dw_w(x_w_1w)                # (B,C,1,W)
        x_w = x_w_1w.permute(0,1,3,2)             # (B,C,W,1)
        # <<< add-on 2 (forward)

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        y = self.act(self.bn1(self.conv1(y)))                # (B,mid,H+W,1)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        a_h = torch.sigmoid(self.conv_h(y_h))                # (B,C,H,1)
        a_w = torch.sigmoid(self.conv_w(y_w))                # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        att = a_h * a_w                                      # (B,C,H,W)
        scale = (1.0 - self.alpha) + self.alpha * att

        return x * scale


class CoordinateAttAddon3(CoordinateAttAddon2):
    """Add-on 3: the depthwise convs of add-on 2, dilated (notebook example d = 2)."""

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__(in_channels, reduction, min_mid_channels, act, alpha, learnable_alpha)
        # >>> add-on 3 (replaces the add-on 2 layers, "only through the parameters")
        d = 2
        self.dw_h = nn.Conv2d(in_channels, in_channels, kernel_size=(3,1), padding=(d,0), dilation=(d,1),
                              groups=in_channels, bias=False)
        self.dw_w = nn.Conv2d(in_channels, in_channels, kernel_size=(1,3), padding=(0,d), dilation=(1,d),
                              groups=in_channels, bias=False)
        # <<< add-on 3


class CoordinateAttAddon4(nn.Module):
    """Add-on 4: per-axis alpha (alpha_h, alpha_w)."""

    last_mask_stats = CoordinateAtt.last_mask_stats

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__()
        mid_channels = max(min_mid_channels, in_channels // reduction)

        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)

        if act.lower() == "hswish":
            self.act = HSwish()
        elif act.lower() == "relu":
            self.act = nn.ReLU(inplace=True)
        else:
            raise ValueError("act must be 'hswish' or 'relu'")

        self.conv_h = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)
        self.conv_w = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)

        # >>> add-on 4 (__init__, instead of the single alpha)
        if learnable_alpha:
            self.alpha_h = nn.Parameter(torch.tensor(float(alpha)))
            self.alpha_w = nn.Parameter(torch.tensor(float(alpha)))
        else:
            self.register_buffer("alpha_h", torch.tensor(float(alpha)))
            self.register_buffer("alpha_w", torch.tensor(float(alpha)))
        # <<< add-on 4 (__init__)

        self._last_ah = None
        self._last_aw = None

    def forward(self, x):
        B, C, H, W = x.shape

        x_h = x.mean(dim=3, keepdim=True)                    # (B,C,H,1)
        x_w = x.mean(dim=2, keepdim=True).permute(0,1,3,2)   # (B,C,W,1)

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        y = self.act(self.bn1(self.conv1(y)))                # (B,mid,H+W,1)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        a_h = torch.sigmoid(self.conv_h(y_h))                # (B,C,H,1)
        a_w = torch.sigmoid(self.conv_w(y_w))                # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        # >>> add-on 4 (end of forward)
        scale_h = (1.0 - self.alpha_h) + self.alpha_h * a_h         # (B,C,H,1)
        scale_w = (1.0 - self.alpha_w) + self.alpha_w * a_w         # (B,C,1,W)
        scale = scale_h * scale_w                                   # (B,C,H,W)
        return x * scale
        # <<< add-on 4


class CoordinateAttAddon5(CoordinateAtt):
    """Add-on 5: hard-sigmoid instead of sigmoid for the two masks."""

    def forward(self, x):
        B, C, H, W = x.shape

        x_h = x.mean(dim=3, keepdim=True)                    # (B,C,H,1)
        x_w = x.mean(dim=2, keepdim=True).permute(0,1,3,2)   # (B,C,W,1)

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        y = self.act(self.bn1(self.conv1(y)))                # (B,mid,H+W,1)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        # >>> add-on 5
        a_h = F.hardsigmoid(self.conv_h(y_h), inplace=True)
        a_w = F.hardsigmoid(self.conv_w(y_w), inplace=True)
        # <<< add-on 5

        self._last_ah = a_h
        self._last_aw = a_w

        att = a_h * a_w                                      # (B,C,H,W)
        scale = (1.0 - self.alpha) + self.alpha * att

        return x * scale


class CoordinateAttAddon6(CoordinateAtt):
    """Add-on 6: attention residual (notebook example beta = 0.5)."""

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__(in_channels, reduction, min_mid_channels, act, alpha, learnable_alpha)
        # >>> add-on 6 (__init__)
        self.beta = 0.5  # 0.2–1.0 aralığında denenebilir (learnable da yapılabilir)
        # <<< add-on 6 (__init__)

    def forward(self, x):
        B, C, H, W = x.shape

        x_h = x.mean(dim=3, keepdim=True)                    # (B,C,H,1)
        x_w = x.mean(dim=2, keepdim=True).permute(0,1,3,2)   # (B,C,W,1)

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        y = self.act(self.bn1(self.conv1(y)))                # (B,mid,H+W,1)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        a_h = torch.sigmoid(self.conv_h(y_h))                # (B,C,H,1)
        a_w = torch.sigmoid(self.conv_w(y_w))                # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        # >>> add-on 6 (end of forward)
        att = a_h * a_w
        att = 1.0 + self.beta * (att - 1.0)
        scale = (1.0 - self.alpha) + self.alpha * att
        return x * scale
        # <<< add-on 6


class CoordinateAttAddon7(nn.Module):
    """Add-on 7: two-layer bottleneck (conv1a/bn1a, conv1b/bn1b instead of conv1/bn1)."""

    last_mask_stats = CoordinateAtt.last_mask_stats

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__()
        mid_channels = max(min_mid_channels, in_channels // reduction)

        # >>> add-on 7 (__init__, instead of conv1/bn1)
        self.conv1a = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn1a   = nn.BatchNorm2d(mid_channels)
        self.conv1b = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn1b   = nn.BatchNorm2d(mid_channels)
        # <<< add-on 7 (__init__)

        if act.lower() == "hswish":
            self.act = HSwish()
        elif act.lower() == "relu":
            self.act = nn.ReLU(inplace=True)
        else:
            raise ValueError("act must be 'hswish' or 'relu'")

        self.conv_h = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)
        self.conv_w = nn.Conv2d(mid_channels, in_channels, kernel_size=1, bias=True)

        if learnable_alpha:
            self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha)))

        self._last_ah = None
        self._last_aw = None

    def forward(self, x):
        B, C, H, W = x.shape

        x_h = x.mean(dim=3, keepdim=True)                    # (B,C,H,1)
        x_w = x.mean(dim=2, keepdim=True).permute(0,1,3,2)   # (B,C,W,1)

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        # >>> add-on 7 (forward)
        y = self.act(self.bn1a(self.conv1a(y)))
        y = self.act(self.bn1b(self.conv1b(y)))
        # <<< add-on 7 (forward)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        a_h = torch.sigmoid(self.conv_h(y_h))                # (B,C,H,1)
        a_w = torch.sigmoid(self.conv_w(y_w))                # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        att = a_h * a_w                                      # (B,C,H,W)
        scale = (1.0 - self.alpha) + self.alpha * att

        return x * scale


class CoordinateAttAddon8(CoordinateAtt):
    """Add-on 8: grouped 1x1 heads (notebook example g = 4)."""

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__(in_channels, reduction, min_mid_channels, act, alpha, learnable_alpha)
        mid_channels = max(min_mid_channels, in_channels // reduction)
        # >>> add-on 8 (__init__, replaces conv_h / conv_w)
        g = 4
        self.conv_h = nn.Conv2d(mid_channels, in_channels, kernel_size=1, groups=g, bias=True)
        self.conv_w = nn.Conv2d(mid_channels, in_channels, kernel_size=1, groups=g, bias=True)
        # <<< add-on 8


class CoordinateAttAddon9(CoordinateAtt):
    """Add-on 9: mini spatial gate after the coordinate scaling."""

    def __init__(
        self,
        in_channels: int,
        reduction: int = 32,
        min_mid_channels: int = 8,
        act: str = "hswish",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
    ):
        super().__init__(in_channels, reduction, min_mid_channels, act, alpha, learnable_alpha)
        # >>> add-on 9 (__init__)
        self.spatial_dw = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels, bias=False)
        self.spatial_pw = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=True)
        # <<< add-on 9 (__init__)

    def forward(self, x):
        B, C, H, W = x.shape

        x_h = x.mean(dim=3, keepdim=True)                    # (B,C,H,1)
        x_w = x.mean(dim=2, keepdim=True).permute(0,1,3,2)   # (B,C,W,1)

        y = torch.cat([x_h, x_w], dim=2)                     # (B,C,H+W,1)
        y = self.act(self.bn1(self.conv1(y)))                # (B,mid,H+W,1)

        y_h, y_w = torch.split(y, [H, W], dim=2)             # (B,mid,H,1) & (B,mid,W,1)
        y_w = y_w.permute(0,1,3,2)                           # (B,mid,1,W)

        a_h = torch.sigmoid(self.conv_h(y_h))                # (B,C,H,1)
        a_w = torch.sigmoid(self.conv_w(y_w))                # (B,C,1,W)

        self._last_ah = a_h
        self._last_aw = a_w

        att = a_h * a_w                                      # (B,C,H,W)
        scale = (1.0 - self.alpha) + self.alpha * att

        # >>> add-on 9 (end of forward, before return)
        out = x * scale
        gate = torch.sigmoid(self.spatial_pw(self.spatial_dw(out)))
        return out * gate
        # <<< add-on 9


ADDONS = {
    1: CoordinateAttAddon1,
    2: CoordinateAttAddon2,
    3: CoordinateAttAddon3,
    4: CoordinateAttAddon4,
    5: CoordinateAttAddon5,
    6: CoordinateAttAddon6,
    7: CoordinateAttAddon7,
    8: CoordinateAttAddon8,
    9: CoordinateAttAddon9,
}


# ---------------------------------------------------------------------------------------------
# Section 10 (verbatim).
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def quick_mask_check(att_module, x):
    att_module.eval()
    _ = att_module(x)
    stats = att_module.last_mask_stats() if hasattr(att_module, "last_mask_stats") else None
    print(stats)
    if stats is not None:
        if stats["a_h"]["std"] < 0.02 or stats["a_w"]["std"] < 0.02:
            print("UYARI: maske std çok düşük -> maske sabitleniyor olabilir.")
