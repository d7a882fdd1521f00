"""Tests of ``coordatt_diag.blocks`` against the seed notebooks.

(a) every block and add-on against the seed formula written out by hand with plain torch ops and
    the module's own weights (float64, so the tolerance can be tight);
(b) state dicts of the verbatim seed classes (``tests/seed_code``) load ``strict=True`` and give the
    same outputs;
(c) ``return_maps=True`` matches the seed's tuple;
(d) a few SGD steps on a toy task lower the loss;
(e) ``quick_mask_check`` warns for a collapsed block and not for a healthy one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from coordatt_diag.blocks import (
    CBAMChannelPlusCoord,
    ChannelAttentionFusionT,
    CoordinateAtt,
    CoordinateAttPlus,
    quick_mask_check,
)
from tests.seed_code import seed000, seed001_step2

Tensor = torch.Tensor
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny tensors: one intra-op thread is faster (and far steadier on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# Helpers: plain-op versions of every layer, reading the module's own weights.
# ----------------------------------------------------------------------------------------------


def sig(z: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-z))


def hsig(z: Tensor) -> Tensor:
    return torch.clamp(z / 6.0 + 0.5, 0.0, 1.0)


def hswish(z: Tensor) -> Tensor:
    return z * torch.clamp(z + 3.0, 0.0, 6.0) / 6.0


def relu(z: Tensor) -> Tensor:
    return torch.clamp(z, min=0.0)


def softplus(z: Tensor) -> Tensor:
    return torch.log(1.0 + torch.exp(z))


def pop_std(t: Tensor) -> Tensor:
    """Per-sample population std, averaged over the batch."""
    flat = t.reshape(t.shape[0], -1)
    mu = flat.mean(dim=1, keepdim=True)
    return ((flat - mu) ** 2).mean(dim=1).sqrt().mean()


def conv1x1(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """1x1 conv (optionally grouped) as an einsum."""
    b, cin, h, w = x.shape
    g = conv.groups
    wt = conv.weight.detach()[:, :, 0, 0]  # (Cout, Cin/g)
    cout = wt.shape[0]
    xs = x.reshape(b, g, cin // g, h, w)
    out = torch.einsum("bgihw,goi->bgohw", xs, wt.reshape(g, cout // g, cin // g))
    out = out.reshape(b, cout, h, w)
    if conv.bias is not None:
        out = out + conv.bias.detach().view(1, -1, 1, 1)
    return out


def dw_axis(x: Tensor, conv: nn.Conv2d, axis: int) -> Tensor:
    """Depthwise 3-tap conv along ``axis`` (2: H, 3: W) with dilation d and zero padding d."""
    d = conv.dilation[axis - 2]
    assert conv.padding[axis - 2] == d and conv.groups == x.shape[1]
    taps = conv.weight.detach().reshape(x.shape[1], 3)  # (C,3)
    pad_shape = list(x.shape)
    pad_shape[axis] = d
    zeros = x.new_zeros(pad_shape)
    xp = torch.cat([zeros, x, zeros], dim=axis)
    n = x.shape[axis]
    out = torch.zeros_like(x)
    for k in range(3):
        out = out + taps[:, k].view(1, -1, 1, 1) * xp.narrow(axis, k * d, n)
    return out


def dw3x3(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Depthwise 3x3 conv, padding 1."""
    _, c, h, w = x.shape
    wt = conv.weight.detach()[:, 0]  # (C,3,3)
    xp = x.new_zeros(x.shape[0], c, h + 2, w + 2)
    xp[:, :, 1 : h + 1, 1 : w + 1] = x
    out = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            out = out + wt[:, i, j].view(1, -1, 1, 1) * xp[:, :, i : i + h, j : j + w]
    return out


def bn(x: Tensor, layer: nn.BatchNorm2d, training: bool) -> Tensor:
    if training:
        mu = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    else:
        assert layer.running_mean is not None and layer.running_var is not None
        mu = layer.running_mean.view(1, -1, 1, 1)
        var = layer.running_var.view(1, -1, 1, 1)
    assert layer.weight is not None and layer.bias is not None
    w = layer.weight.detach().view(1, -1, 1, 1)
    b = layer.bias.detach().view(1, -1, 1, 1)
    return (x - mu) / torch.sqrt(var + layer.eps) * w + b


def gn(x: Tensor, layer: nn.GroupNorm) -> Tensor:
    b, c, h, w = x.shape
    g = layer.num_groups
    xs = x.reshape(b, g, -1)
    mu = xs.mean(dim=2, keepdim=True)
    var = ((xs - mu) ** 2).mean(dim=2, keepdim=True)
    xn = ((xs - mu) / torch.sqrt(var + layer.eps)).reshape(b, c, h, w)
    return xn * layer.weight.detach().view(1, -1, 1, 1) + layer.bias.detach().view(1, -1, 1, 1)


def norm(x: Tensor, layer: nn.Module, training: bool) -> Tensor:
    if isinstance(layer, nn.BatchNorm2d):
        return bn(x, layer, training)
    if isinstance(layer, nn.GroupNorm):
        return gn(x, layer)
    assert isinstance(layer, nn.Identity)
    return x


_KEEP = ("alpha", "T", "t_raw", "r_ema", "num_batches_tracked")


@torch.no_grad()
def randomize_(module: ModuleT, seed: int, scale: float = 0.5) -> ModuleT:
    """Random weights everywhere (BN running stats too); alphas / temperatures / r_ema kept."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith(_KEEP):
            continue
        if leaf == "running_var" or (leaf == "weight" and t.dim() == 1):  # variance, norm affine
            t.copy_(0.5 + torch.rand(t.shape, generator=gen))
        else:
            t.copy_(scale * torch.randn(t.shape, generator=gen))
    return module


def close(actual: Any, expected: Any, tol: float) -> None:
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def close_stats(actual: Any, expected: Any, tol: float = 1e-6) -> None:
    """Nested ``last_mask_stats()`` dicts (or None) are equal to ``tol``."""
    if expected is None:
        assert actual is None
        return
    assert actual is not None and actual.keys() == expected.keys()
    for axis, values in expected.items():
        assert actual[axis] == pytest.approx(values, abs=tol), axis


def x_input(seed: int, shape: tuple[int, ...] = (2, 16, 7, 9), dtype: Any = torch.float64) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype)


# ----------------------------------------------------------------------------------------------
# (a) CoordinateAtt and its add-ons against the seed 000 formulas.
# ----------------------------------------------------------------------------------------------


def hand_coordatt(m: CoordinateAtt, x: Tensor, opts: dict[str, Any], training: bool) -> Tensor:
    """Seed 000 section 0 with the add-ons in ``opts`` written out."""
    _, _, h, w = x.shape
    # section 0 / add-on 1: axis profiles
    if opts.get("pool") == "meanmax":
        x_h = 0.5 * (x.sum(dim=3, keepdim=True) / w + x.max(dim=3, keepdim=True).values)
        x_w = 0.5 * (x.sum(dim=2, keepdim=True) / h + x.max(dim=2, keepdim=True).values)
    else:
        x_h = x.sum(dim=3, keepdim=True) / w  # (B,C,H,1)
        x_w = x.sum(dim=2, keepdim=True) / h  # (B,C,1,W)
    # add-ons 2/3: depthwise (dilated) 3-tap convs along the axis
    if opts.get("axis_dw") or opts.get("dilation", 1) > 1:
        x_h = dw_axis(x_h, m.dw_h, axis=2)
        x_w = dw_axis(x_w, m.dw_w, axis=3)
    y = torch.cat([x_h, x_w.transpose(2, 3)], dim=2)  # (B,C,H+W,1)
    act = relu if opts.get("act") == "relu" else hswish
    # section 0 / add-on 7: bottleneck
    if opts.get("bottleneck_layers", 1) == 2:
        y = act(bn(conv1x1(y, m.conv1a), m.bn1a, training))
        y = act(bn(conv1x1(y, m.conv1b), m.bn1b, training))
    else:
        y = act(bn(conv1x1(y, m.conv1), m.bn1, training))
    y_h, y_w = y[:, :, :h], y[:, :, h:].transpose(2, 3)
    # section 0 / add-on 5 / add-on 8 (grouped heads inside conv1x1)
    gate = hsig if opts.get("gate") == "hardsigmoid" else sig
    a_h = gate(conv1x1(y_h, m.conv_h))  # (B,C,H,1)
    a_w = gate(conv1x1(y_w, m.conv_w))  # (B,C,1,W)
    beta = opts.get("att_residual_beta")
    if opts.get("per_axis_alpha"):  # add-on 4 (+ 6 on the product)
        ah_, aw_ = m.alpha_h.detach(), m.alpha_w.detach()
        scale = ((1 - ah_) + ah_ * a_h) * ((1 - aw_) + aw_ * a_w)
        if beta is not None:
            scale = 1 + beta * (scale - 1)
    else:
        att = a_h * a_w
        if beta is not None:  # add-on 6
            att = 1 + beta * (att - 1)
        al = m.alpha.detach()
        scale = (1 - al) + al * att
    out = x * scale
    if opts.get("spatial_gate"):  # add-on 9
        out = out * sig(conv1x1(dw3x3(out, m.spatial_dw), m.spatial_pw))
    return out


ADDON_OPTS: dict[int, dict[str, Any]] = {
    1: {"pool": "meanmax"},
    2: {"axis_dw": True},
    3: {"dilation": 2},
    4: {"per_axis_alpha": True},
    5: {"gate": "hardsigmoid"},
    6: {"att_residual_beta": 0.5},
    7: {"bottleneck_layers": 2},
    8: {"head_groups": 4},
    9: {"spatial_gate": True},
}

COMBOS: list[dict[str, Any]] = [
    {},
    {"act": "relu"},
    *ADDON_OPTS.values(),
    {"dilation": 3, "pool": "meanmax"},
    {"per_axis_alpha": True, "att_residual_beta": 0.3, "gate": "hardsigmoid"},
    {"bottleneck_layers": 2, "head_groups": 2, "spatial_gate": True, "axis_dw": True},
    {
        "pool": "meanmax",
        "dilation": 2,
        "per_axis_alpha": True,
        "gate": "hardsigmoid",
        "att_residual_beta": 0.7,
        "bottleneck_layers": 2,
        "head_groups": 4,
        "spatial_gate": True,
    },
]


def build_coordatt(opts: dict[str, Any], alpha: float = 0.7, learnable: bool = False) -> CoordinateAtt:
    kw = dict(opts)
    act = kw.pop("act", "hswish")
    return CoordinateAtt(16, act=act, alpha=alpha, learnable_alpha=learnable, **kw)


@pytest.mark.parametrize("opts", COMBOS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "ref")
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_coordatt_matches_hand_formula(opts: dict[str, Any], training: bool) -> None:
    torch.manual_seed(0)
    m = randomize_(build_coordatt(opts), seed=1).double().train(training)
    x = x_input(2)
    expected = hand_coordatt(m, x, opts, training)
    close(m(x), expected, 1e-10)
    # the kept masks are the gate outputs, with the notebook's shapes
    assert m._last_ah is not None and m._last_aw is not None
    assert m._last_ah.shape == (2, 16, 7, 1) and m._last_aw.shape == (2, 16, 1, 9)


def test_coordatt_state_dict_names() -> None:
    assert set(CoordinateAtt(16).state_dict()) == {
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "bn1.num_batches_tracked", "conv_h.weight", "conv_h.bias", "conv_w.weight",
        "conv_w.bias", "alpha",
    }  # fmt: skip
    m = CoordinateAtt(16, learnable_alpha=True, per_axis_alpha=True)
    assert {n for n, _ in m.named_parameters()} >= {"alpha_h", "alpha_w"}
    assert "alpha" not in m.state_dict()
    # dilation > 1 implies the depthwise convs of add-on 2, with that dilation
    d = CoordinateAtt(16, dilation=3)
    assert d.axis_dw and d.dw_h.dilation == (3, 1) and d.dw_w.padding == (0, 3)


def test_coordatt_last_mask_stats() -> None:
    torch.manual_seed(0)
    m = CoordinateAtt(16)
    assert m.last_mask_stats() is None
    m(torch.randn(2, 16, 5, 6))
    stats = m.last_mask_stats()
    assert stats is not None and m._last_ah is not None
    assert set(stats) == {"a_h", "a_w"} and set(stats["a_h"]) == {"min", "mean", "max", "std"}
    assert stats["a_h"]["std"] == pytest.approx(float(m._last_ah.detach().std()))  # unbiased, as torch.std


@pytest.mark.parametrize(
    "kwargs",
    [{"pool": "max"}, {"gate": "relu"}, {"bottleneck_layers": 3}, {"head_groups": 3},
     {"dilation": 0}, {"act": "gelu"}],
)  # fmt: skip
def test_coordatt_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CoordinateAtt(16, **kwargs)


# ----------------------------------------------------------------------------------------------
# (a) Step-2 blocks against the seed 001 formulas.
# ----------------------------------------------------------------------------------------------


def hand_ca(
    ca: ChannelAttentionFusionT, x: Tensor, opts: dict[str, Any]
) -> tuple[Tensor, Tensor, Tensor | None]:
    act = relu if opts.get("act", "relu") == "relu" else (lambda z: z * sig(z))
    avg = x.mean(dim=(2, 3), keepdim=True)
    mx = x.amax(dim=(2, 3), keepdim=True)

    def mlp(s: Tensor) -> Tensor:
        return conv1x1(act(conv1x1(s, ca.fc1)), ca.fc2)

    a, mm = mlp(avg), mlp(mx)
    fusion_w = None
    if opts.get("fusion", "softmax") == "sum":
        z = a + mm
    else:
        assert ca.fusion_router is not None
        r0, r2 = ca.fusion_router[0], ca.fusion_router[2]
        assert isinstance(r0, nn.Conv2d) and isinstance(r2, nn.Conv2d)
        logits = conv1x1(relu(conv1x1(torch.cat([avg, mx], dim=1), r0)), r2).flatten(1)
        e = torch.exp(logits / opts.get("router_temperature", 1.5))
        fusion_w = e / e.sum(dim=1, keepdim=True)  # (B,2)
        z = fusion_w[:, :1, None, None] * a + fusion_w[:, 1:, None, None] * mm
    if opts.get("learnable_temperature"):
        t = softplus(ca.t_raw.detach()) + 1e-6
    else:
        t = ca.T
    t = torch.clamp(t.to(x.dtype), opts.get("t_min", 0.5), opts.get("t_max", 3.0))
    gate = hsig if opts.get("gate") == "hardsigmoid" else sig
    cam = gate(z / t)  # (B,C,1,1)
    y = x * (1 + opts.get("beta_ca", 0.35) * (cam - 1))
    return y, cam, fusion_w


CA_CASES: list[dict[str, Any]] = [
    {},
    {"fusion": "sum", "gate": "hardsigmoid", "temperature": 5.0},  # T clamped to t_max
    {"temperature": 0.2, "t_min": 0.4, "beta_ca": 1.0, "act": "silu"},  # T clamped to t_min
    {"learnable_temperature": True, "temperature": 2.0, "router_temperature": 0.7},
    {"learnable_temperature": True, "temperature": 9.0, "t_max": 2.5},  # init clamped
]


@pytest.mark.parametrize("opts", CA_CASES)
def test_channel_attention_matches_hand_formula(opts: dict[str, Any]) -> None:
    torch.manual_seed(0)
    ca = ChannelAttentionFusionT(16, return_fusion_weights=True, **opts)
    ca = randomize_(ca, seed=3, scale=0.8).double()
    x = x_input(4)
    y, cam, fusion_w = ca(x)
    ey, ecam, efw = hand_ca(ca, x, opts)
    close(y, ey, 1e-10)
    close(cam, ecam, 1e-10)
    assert cam.shape == (2, 16, 1, 1)
    if efw is None:
        assert fusion_w is None
    else:
        close(fusion_w, efw, 1e-10)
        assert fusion_w.shape == (2, 2)
    if opts.get("learnable_temperature"):
        t_max = opts.get("t_max", 3.0)
        t0 = min(max(opts["temperature"], 0.5 + 1e-6), t_max - 1e-6)
        assert float(F.softplus(ca.t_raw.detach()) + 1e-6) == pytest.approx(t0, abs=1e-5)
        # and T is clamped from above in forward too
        with torch.no_grad():
            ca.t_raw.fill_(10.0)
        assert float(ca.get_T(x).detach()) == pytest.approx(t_max)
    else:
        t = opts.get("temperature", 0.9)
        assert float(ca.get_T(x)) == pytest.approx(min(max(t, opts.get("t_min", 0.5)), 3.0))
    # two outputs without return_fusion_weights
    ca.return_fusion_weights = False
    assert len(ca(x)) == 2


def test_router_starts_uniform() -> None:
    ca = ChannelAttentionFusionT(16, return_fusion_weights=True)
    _, _, fusion_w = ca(torch.randn(3, 16, 4, 4))
    close(fusion_w, torch.full((3, 2), 0.5), 0.0)


def hand_coord(m: CoordinateAttPlus, x: Tensor, opts: dict[str, Any], training: bool) -> Tensor:
    _, _, h, w = x.shape
    hp = 0.5 * (x.mean(dim=3, keepdim=True) + x.amax(dim=3, keepdim=True))  # (B,C,H,1)
    wp = 0.5 * (x.mean(dim=2, keepdim=True) + x.amax(dim=2, keepdim=True))  # (B,C,1,W)
    h_ms = conv1x1(dw_axis(hp, m.h_local_dw, 2) + dw_axis(hp, m.h_dilated_dw, 2), m.h_channel_mixer)
    w_ms = conv1x1(dw_axis(wp, m.w_local_dw, 3) + dw_axis(wp, m.w_dilated_dw, 3), m.w_channel_mixer)
    hw = torch.cat([h_ms, w_ms.transpose(2, 3)], dim=2)
    act = {"hswish": hswish, "relu": relu, "silu": lambda z: z * sig(z)}[opts.get("act", "hswish")]
    mid = act(norm(conv1x1(hw, m.shared_bottleneck_proj), m.shared_bottleneck_norm, training))
    mid = act(norm(conv1x1(mid, m.shared_bottleneck_refine), m.shared_bottleneck_refine_norm, training))
    mid_h, mid_w = mid[:, :, :h], mid[:, :, h:].transpose(2, 3)
    attn_h = hsig(conv1x1(mid_h, m.h_attention_head))
    attn_w = hsig(conv1x1(mid_w, m.w_attention_head))
    al_h, al_w = sig(m.alpha_h_raw.detach()), sig(m.alpha_w_raw.detach())
    scale = ((1 - al_h) + al_h * attn_h) * ((1 - al_w) + al_w * attn_w)
    scale = 1 + opts.get("beta", 0.35) * (scale - 1)
    scale = torch.clamp(scale, opts.get("scale_min", 0.6), opts.get("scale_max", 1.6))
    out = x * scale
    if opts.get("use_spatial_gate"):
        sg = hsig(conv1x1(dw3x3(x, m.spatial_gate_dw), m.spatial_gate_pw))
        out = out * (1 + opts.get("spatial_gate_beta", 0.35) * (sg - 1))
    return out


COORD_CASES: list[dict[str, Any]] = [
    {},
    {"norm": "bn", "act": "relu", "dilation": 3, "beta": 1.0, "scale_min": 0.8, "scale_max": 1.2},
    {"norm": "none", "act": "silu", "use_spatial_gate": True, "init_alpha": 0.3},
    {"use_spatial_gate": True, "spatial_gate_beta": 0.8, "learnable_alpha": False},
]


@pytest.mark.parametrize("opts", COORD_CASES)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_coordinate_att_plus_matches_hand_formula(opts: dict[str, Any], training: bool) -> None:
    torch.manual_seed(0)
    m = randomize_(CoordinateAttPlus(16, **opts), seed=5, scale=0.9).double().train(training)
    x = x_input(6)
    out = m(x)
    close(out, hand_coord(m, x, opts, training), 1e-10)
    assert m._last_ah is not None and m._last_aw is not None
    assert m._last_ah.shape == (2, 16, 7, 1) and m._last_aw.shape == (2, 16, 1, 9)
    assert not m._last_ah.requires_grad  # detached, as in the seed


def test_coordinate_att_plus_scale_clamp_binds() -> None:
    torch.manual_seed(0)
    m = randomize_(CoordinateAttPlus(16, beta=1.0, init_alpha=0.99), seed=7, scale=3.0).double()
    x = x_input(8).abs() + 0.1  # positive input: out / x is the scale
    ratio = (m(x) / x).detach()
    assert float(ratio.min()) == pytest.approx(0.6)
    # attn in [0, 1] and alpha in (0, 1) give scale_h * scale_w <= 1, so with beta >= 0 the upper
    # clamp (scale_max) cannot bind: it only guards against beta < 0.
    assert float(ratio.max()) <= 1.0 + 1e-12


def test_coordinate_att_plus_head_init() -> None:
    torch.manual_seed(0)
    m = CoordinateAttPlus(64)
    for head in (m.h_attention_head, m.w_attention_head):
        assert head.bias is not None and torch.all(head.bias == 0)
        assert 0.007 < float(head.weight.detach().std()) < 0.013
    # mid = max(min_mid, C // reduction, max(8, min(32, C // 4))) = 16, GroupNorm with 16 groups
    assert m.shared_bottleneck_proj.out_channels == 16
    assert isinstance(m.shared_bottleneck_norm, nn.GroupNorm)
    assert m.shared_bottleneck_norm.num_groups == 16
    assert float(torch.sigmoid(m.alpha_h_raw.detach())) == pytest.approx(0.7)


def hand_block(
    m: CBAMChannelPlusCoord, x: Tensor, ca_opts: dict[str, Any], coord_opts: dict[str, Any]
) -> tuple[Tensor, Tensor]:
    """``y = Coord(CA(x))`` written out; returns (x, y)."""
    y_ca, _, _ = hand_ca(m.ca, x, ca_opts)
    return x, hand_coord(m.coord, y_ca, coord_opts, m.training)


@pytest.mark.parametrize(
    ("rescue_mode", "r_ema0"),
    [("ratio_floor", 0.05), ("ratio_floor", 0.3), ("alpha_floor", 0.05), ("alpha_floor", 0.3),
     ("ratio_floor", 1.0)],
)  # fmt: skip
def test_block_monitor_and_rescue_match_hand_formula(rescue_mode: str, r_ema0: float) -> None:
    torch.manual_seed(0)
    m = CBAMChannelPlusCoord(16, monitor=True, return_maps=True, rescue_mode=rescue_mode)
    m = randomize_(m, seed=9, scale=0.7).double().train()
    with torch.no_grad():
        m.r_ema.fill_(r_ema0)
    r_ema = torch.tensor(r_ema0, dtype=torch.float64)
    x = x_input(10)
    alpha = sig(m.alpha_raw.detach())
    seen: list[dict[str, Any]] = []
    for step in range(3):
        xs = x * (1 + 0.3 * step)
        _, y = hand_block(m, xs, {}, {})
        out_pre = xs + alpha * (y - xs)
        r_out = torch.clamp(pop_std(out_pre) / (pop_std(xs) + 1e-12), 0.0, 10.0)
        r_ema = 0.95 * r_ema + 0.05 * r_out
        ratio = torch.clamp(r_ema / 0.45, 0.0, 1.0)
        if rescue_mode == "ratio_floor":
            alpha_eff = alpha * torch.clamp(ratio, 0.2, 1.0)
        else:
            alpha_eff = torch.clamp(alpha * ratio, 0.2, 1.0)
        expected = xs + alpha_eff * (y - xs)

        out, ca_map, fusion_w, coord_stats, monitor = m(xs)
        # the monitor measures std in float32 (x.float(), as in the seed): 1e-6, not 1e-10
        close(out, expected, 1e-6)
        close(m.r_ema, r_ema, 1e-6)
        assert monitor is not None and coord_stats is not None
        assert monitor["rescue_mode"] == rescue_mode
        assert monitor["r_out_pre"] == pytest.approx(float(r_out), abs=1e-6)
        assert monitor["r_ema"] == pytest.approx(float(r_ema), abs=1e-6)
        assert monitor["alpha"] == pytest.approx(float(alpha), abs=1e-6)
        assert monitor["alpha_eff"] == pytest.approx(float(alpha_eff), abs=1e-6)
        assert monitor["x_std"] == pytest.approx(float(pop_std(xs)), abs=1e-6)
        assert monitor["y_std"] == pytest.approx(float(pop_std(y)), abs=1e-6)
        assert monitor["r_block"] == pytest.approx(float(pop_std(y) / pop_std(xs)), abs=1e-6)
        assert ca_map.shape == (2, 16, 1, 1) and fusion_w.shape == (2, 2)
        seen.append(monitor)
    if r_ema0 == 0.05:  # first step: r_ema ~ 0.09, ratio ~ 0.2: the floors bind
        floor = 0.2 * float(alpha) if rescue_mode == "ratio_floor" else 0.2
        assert seen[0]["alpha_eff"] == pytest.approx(floor, abs=1e-6)
    elif r_ema0 == 0.3:  # rescue engaged, floors not binding
        assert 0.2 < seen[0]["alpha_eff"] < float(alpha)
    else:  # no rescue while r_ema >= r_min
        assert all(s["alpha_eff"] == pytest.approx(float(alpha)) for s in seen)


def test_block_without_monitor_or_in_eval() -> None:
    torch.manual_seed(0)
    m = randomize_(CBAMChannelPlusCoord(16, return_maps=True), seed=11).double()
    x = x_input(12)
    for monitor, training in ((False, True), (True, False)):
        m.monitor = monitor
        m.train(training)
        with torch.no_grad():
            m.r_ema.fill_(0.1)
        _, y = hand_block(m, x, {}, {})
        alpha = sig(m.alpha_raw.detach())
        out, _, _, _, monitor_stats = m(x)
        close(out, x + alpha * (y - x), 1e-10)
        assert monitor_stats is None
        assert float(m.r_ema) == pytest.approx(0.1)  # untouched


def test_block_options_match_hand_formula() -> None:
    torch.manual_seed(0)
    ca_opts = {"fusion": "sum", "gate": "hardsigmoid", "learnable_temperature": True,
               "temperature": 1.3}  # fmt: skip
    coord_opts = {"norm": "bn", "use_spatial_gate": True, "dilation": 3}
    m = CBAMChannelPlusCoord(
        16, ca_fusion="sum", ca_gate="hardsigmoid", learnable_temperature=True,
        ca_temperature=1.3, coord_norm="bn", coord_use_spatial_gate=True, coord_dilation=3,
        learnable_alpha=True, alpha_init=0.4,
    )  # fmt: skip
    m = randomize_(m, seed=13).double().eval()
    x = x_input(14)
    _, y = hand_block(m, x, ca_opts, coord_opts)
    alpha = sig(m.alpha_raw.detach())
    assert float(alpha) == pytest.approx(0.4)
    close(m(x), x + alpha * (y - x), 1e-10)
    # no residual: the block output is y
    m2 = randomize_(CBAMChannelPlusCoord(16, residual=False), seed=13).double().eval()
    _, y2 = hand_block(m2, x, {}, {})
    close(m2(x), y2, 1e-10)
    assert "alpha_raw" not in m2.state_dict()


# ----------------------------------------------------------------------------------------------
# (b) + (c) Parity with the verbatim seed classes.
# ----------------------------------------------------------------------------------------------


def _parity(seed_m: nn.Module, ours: nn.Module, x: Tensor, training: bool) -> None:
    ours.load_state_dict(seed_m.state_dict(), strict=True)
    seed_m.train(training)
    ours.train(training)
    a = seed_m(x.clone())
    b = ours(x.clone())
    close(b, a, 1e-6)


SEED_CASES = [0, *ADDON_OPTS]


@pytest.mark.parametrize("addon", SEED_CASES, ids=lambda k: f"addon{k}" if k else "reference")
@pytest.mark.parametrize("learnable", [False, True], ids=["buffer_alpha", "learnable_alpha"])
def test_coordatt_seed_state_dict_parity(addon: int, learnable: bool) -> None:
    torch.manual_seed(0)
    seed_cls = seed000.CoordinateAtt if addon == 0 else seed000.ADDONS[addon]
    seed_m: Any = randomize_(seed_cls(16, alpha=0.7, learnable_alpha=learnable), seed=20 + addon)
    ours = build_coordatt(ADDON_OPTS.get(addon, {}), alpha=0.2, learnable=learnable)
    x = x_input(21, dtype=torch.float32)
    for training in (False, True):
        _parity(seed_m, ours, x, training)
    assert ours._last_ah is not None and seed_m._last_ah is not None
    close(ours._last_ah, seed_m._last_ah, 1e-6)
    close_stats(ours.last_mask_stats(), seed_m.last_mask_stats())
    # BN running statistics moved identically in training mode
    close(ours.state_dict(), seed_m.state_dict(), 1e-6)


STEP2_CASES: list[dict[str, Any]] = [
    {},
    {"learnable_temperature": True, "ca_temperature": 1.7, "learnable_alpha": True},
    {"ca_fusion": "sum", "ca_gate": "hardsigmoid", "ca_act": "silu", "coord_norm": "bn"},
    {"coord_use_spatial_gate": True, "coord_learnable_alpha": False, "coord_act": "relu",
     "coord_norm": "none", "coord_dilation": 3},
    {"residual": False},
    {"monitor": True, "rescue_mode": "alpha_floor"},
    {"monitor": True, "ema_momentum": 0.5, "r_min": 0.9},
]  # fmt: skip


def _step2_pair(kwargs: dict[str, Any], seed: int) -> tuple[Any, CBAMChannelPlusCoord]:
    torch.manual_seed(0)
    seed_m = randomize_(seed001_step2.CBAMChannelPlusCoord(16, **kwargs), seed=seed)
    ours = CBAMChannelPlusCoord(16, **kwargs)
    ours.load_state_dict(seed_m.state_dict(), strict=True)
    return seed_m, ours


@pytest.mark.parametrize("kwargs", STEP2_CASES)
def test_step2_seed_state_dict_parity(kwargs: dict[str, Any]) -> None:
    seed_m, ours = _step2_pair(kwargs, seed=30)
    x = x_input(31, dtype=torch.float32)
    for training in (False, True, True):
        seed_m.train(training)
        ours.train(training)
        close(ours(x), seed_m(x), 1e-6)
        close(ours.r_ema, seed_m.r_ema, 1e-6)
    close(ours.state_dict(), seed_m.state_dict(), 1e-6)
    # the parts on their own
    close(ours.ca(x)[1], seed_m.ca(x)[1], 1e-6)
    close(ours.coord(x), seed_m.coord(x), 1e-6)


@pytest.mark.parametrize("kwargs", STEP2_CASES)
def test_step2_return_maps_matches_seed_tuple(kwargs: dict[str, Any]) -> None:
    kwargs = {**kwargs, "return_maps": True}
    seed_m, ours = _step2_pair(kwargs, seed=40)
    x = x_input(41, dtype=torch.float32)
    for training in (True, False):
        seed_m.train(training)
        ours.train(training)
        got = ours(x)
        want = seed_m(x)
        assert isinstance(got, tuple) and len(got) == len(want) == 5
        close(got[0], want[0], 1e-6)
        close(got[1], want[1], 1e-6)
        if want[2] is None:
            assert got[2] is None
        else:
            close(got[2], want[2], 1e-6)
        close_stats(got[3], want[3])
        if want[4] is None:
            assert got[4] is None
        else:
            assert got[4] is not None and got[4].keys() == want[4].keys()
            assert got[4].pop("rescue_mode") == want[4].pop("rescue_mode")
            assert got[4] == pytest.approx(want[4], abs=1e-6)


def test_step2_seed_quick_test_cell() -> None:
    """Seed 001 section 8: the block at init has masks near 0.5 with std about 0.004."""
    torch.manual_seed(0)
    m = CBAMChannelPlusCoord(
        channels=64, return_maps=True, residual=True, learnable_temperature=True, monitor=True
    ).train()
    out, ca_map, fusion_w, coord_stats, monitor_stats = m(torch.randn(2, 64, 56, 56))
    assert out.shape == (2, 64, 56, 56) and ca_map.shape == (2, 64, 1, 1)
    assert fusion_w.shape == (2, 2)
    assert list(monitor_stats) == ["x_std", "y_std", "out_std_pre", "r_block", "r_out_pre",
                                   "r_ema", "alpha", "alpha_eff", "rescue_mode"]  # fmt: skip
    assert monitor_stats["alpha"] == pytest.approx(0.75)
    for axis in ("a_h", "a_w"):
        assert coord_stats[axis]["mean"] == pytest.approx(0.5, abs=0.01)
        assert coord_stats[axis]["std"] < 0.02


# ----------------------------------------------------------------------------------------------
# Masks come straight from the gate calls (what coordatt_diag.capture.engine relies on).
# ----------------------------------------------------------------------------------------------


class _GateRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[Tensor] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in ("sigmoid", "hardsigmoid"):
            self.outputs.append(result)
        return result


def test_coordatt_masks_are_gate_outputs() -> None:
    m = CoordinateAtt(16, gate="hardsigmoid", spatial_gate=True)
    rec = _GateRecorder()
    with rec:
        m(torch.randn(2, 16, 5, 6))
    shapes = [tuple(t.shape) for t in rec.outputs]
    assert shapes == [(2, 16, 5, 1), (2, 16, 1, 6), (2, 16, 5, 6)]
    assert rec.outputs[0] is m._last_ah and rec.outputs[1] is m._last_aw


def test_block_masks_are_gate_outputs() -> None:
    m = CBAMChannelPlusCoord(16, return_maps=True, coord_use_spatial_gate=True)
    rec = _GateRecorder()
    with rec:
        _, ca_map, *_ = m(torch.randn(2, 16, 5, 6))
    assert any(t is ca_map for t in rec.outputs)
    shapes = sorted(tuple(t.shape) for t in rec.outputs)
    # ca (B,C,1,1); attn_h, attn_w; spatial gate (B,C,H,W); three scalar sigmoid(alpha_raw)
    assert shapes == sorted([(2, 16, 1, 1), (2, 16, 5, 1), (2, 16, 1, 6), (2, 16, 5, 6),
                             (), (), ()])  # fmt: skip


# ----------------------------------------------------------------------------------------------
# (d) Training lowers the loss.
# ----------------------------------------------------------------------------------------------


def _train(model: nn.Module, steps: int = 25, lr: float = 0.2) -> tuple[float, float]:
    torch.manual_seed(123)
    x = torch.randn(8, 16, 8, 8)
    hh = torch.linspace(0, 1, 8).view(1, 1, 8, 1)
    ww = torch.linspace(0, 1, 8).view(1, 1, 1, 8)
    cc = torch.linspace(0.5, 1.5, 16).view(1, 16, 1, 1)
    target = x * (0.3 + 0.7 * hh * ww * cc).clamp(max=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(x)
        loss = F.mse_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize(
    "opts",
    [{}, {"pool": "meanmax", "dilation": 2, "gate": "hardsigmoid", "per_axis_alpha": True},
     {"bottleneck_layers": 2, "head_groups": 4, "att_residual_beta": 0.5, "spatial_gate": True}],
)  # fmt: skip
def test_coordatt_training_lowers_loss(opts: dict[str, Any]) -> None:
    torch.manual_seed(0)
    first, last = _train(build_coordatt(opts, alpha=1.0, learnable=True))
    assert last < 0.7 * first


@pytest.mark.parametrize("kwargs", [{}, {"monitor": True, "learnable_alpha": True}])
def test_block_training_lowers_loss(kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    # the block is gentle by design (beta_ca, coord beta, residual alpha): a larger step
    first, last = _train(CBAMChannelPlusCoord(16, **kwargs), lr=1.0)
    assert last < 0.7 * first


# ----------------------------------------------------------------------------------------------
# (e) quick_mask_check.
# ----------------------------------------------------------------------------------------------


def test_quick_mask_check_healthy_block_has_no_warning() -> None:
    torch.manual_seed(0)
    m = CoordinateAtt(16).train()
    stats, warnings = quick_mask_check(m, torch.randn(4, 16, 8, 8))
    assert stats is not None and warnings == []
    assert stats["a_h"]["std"] > 0.02 and stats["a_w"]["std"] > 0.02
    assert m.training  # mode restored


def test_quick_mask_check_collapsed_block_warns(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    m = CoordinateAtt(16)
    with torch.no_grad():
        for head in (m.conv_h, m.conv_w):
            head.weight.zero_()
            assert head.bias is not None
            head.bias.zero_()
    x = torch.randn(4, 16, 8, 8)
    stats, warnings = quick_mask_check(m, x, verbose=True)
    assert stats is not None
    assert stats["a_h"]["mean"] == pytest.approx(0.5) and stats["a_h"]["std"] == 0.0
    assert len(warnings) == 1 and "mask std very low" in warnings[0]
    assert "WARNING: mask std very low" in capsys.readouterr().out
    # the seed's own function agrees
    seed000.quick_mask_check(m, x)
    assert "UYARI" in capsys.readouterr().out


def test_quick_mask_check_untrained_plus_block_and_no_stats() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    # seed 001 section 9: small head init -> std ~0.004, the seed rule warns here as well
    _, warnings = quick_mask_check(CoordinateAttPlus(16), x)
    assert len(warnings) == 1
    stats, warnings = quick_mask_check(nn.Conv2d(16, 16, 1), x)
    assert stats is None and warnings == []


def test_hand_helpers_agree_with_torch() -> None:
    """Sanity of the plain-op helpers themselves."""
    x = x_input(50)
    conv = nn.Conv2d(16, 16, (3, 1), padding=(2, 0), dilation=(2, 1), groups=16, bias=False)
    conv = conv.double()
    close(dw_axis(x, conv, 2), conv(x), 1e-12)
    conv3 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False).double()
    close(dw3x3(x, conv3), conv3(x), 1e-12)
    g = nn.Conv2d(16, 8, 1, groups=4).double()
    close(conv1x1(x, g), g(x), 1e-12)
    assert math.isclose(
        float(softplus(torch.tensor(0.3))), float(F.softplus(torch.tensor(0.3))), rel_tol=1e-6
    )
