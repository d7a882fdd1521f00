"""The corpus of attention modules from public code, and the check each one must pass.

`CASES` names each module, the repository whose pattern it follows, the block discovery must
report, its masks and the hand computation of those masks. `check(case, size)` builds a small net
around the module, perturbs its weights, discovers, captures and analyses it, and compares
everything with the hand computation; `python -m tests.wild.corpus` runs every check and writes
docs/coverage.md from the results.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coordatt_diag import analyze_model
from coordatt_diag.capture.engine import MaskCapture, discover_blocks
from tests.wild import modules_a as A
from tests.wild import modules_b as B
from tests.wild import modules_c as C

#: (name, C, H, W): C equal to H and W (square maps), and C, H, W all different
SIZES = [("C=H=W", 16, 16, 16), ("C!=H!=W", 16, 12, 10)]
TOL = 1e-4


@dataclass(frozen=True)
class Case:
    """One module of the corpus."""

    id: str
    family: str
    source: str
    build: Callable[[int], nn.Module]
    ref: Callable[..., dict[str, torch.Tensor]]
    masks: tuple[str, ...]
    block: str = "att"  # the block's name in the net
    identity: bool | None = None
    parts: tuple[str, ...] | None = None
    net: str = "plain"  # "plain": stem -> att -> head; "gate": att(g=..., x=...)
    kind: str | None = None


@dataclass(frozen=True)
class Negative:
    id: str
    source: str
    build: Callable[[int], nn.Module]


CASES: list[Case] = [
    Case("se_layer", "SE", "moskomule/senet.pytorch", A.SELayer, A.ref_se_layer, ("channel",),
         identity=False),
    Case("se_basic_block", "SE", "moskomule/senet.pytorch", A.SEBasicBlock, A.ref_se_layer,
         ("channel",), block="att.se"),
    Case("timm_se", "SE", "huggingface/pytorch-image-models (timm layers)", A.TimmSEModule,
         A.ref_timm_se, ("channel",)),
    Case("timm_ese", "SE", "huggingface/pytorch-image-models (timm layers)", A.EffectiveSE,
         A.ref_ese, ("channel",)),
    Case("torchvision_se", "SE", "pytorch/vision", A.TVSqueezeExcitation, A.ref_tv_se,
         ("channel",)),
    Case("mmdet_se", "SE", "open-mmlab/mmdetection", A.MMDetSELayer, A.ref_mmdet_se,
         ("channel",)),
    Case("efficientnet_mbconv", "SE", "lukemelas/EfficientNet-PyTorch", A.MBConvBlock,
         A.ref_mbconv, ("channel",), identity=True),
    Case("bottleneck_se", "SE", "YOLO attention collections (iscyy/yoloair)", B.BottleneckSE,
         B.ref_bottleneck_se, ("channel",), identity=True, parts=("se",)),
    Case("srm", "SE", "hyunjaelee410/style-based-recalibration-module", A.SRMLayer, A.ref_srm,
         ("channel",)),
    Case("fca", "SE", "cfzd/FcaNet", A.MultiSpectral, A.ref_fca, ("channel",)),
    Case("gct", "SE", "z-x-yang/GCT", A.GCT, A.ref_gct, ("channel",)),
    Case("eca_layer", "ECA", "BangguWu/ECANet", A.EcaLayer, A.ref_eca_layer, ("channel",)),
    Case("timm_eca", "ECA", "huggingface/pytorch-image-models (timm layers)", A.TimmEca,
         A.ref_timm_eca, ("channel",)),
    Case("timm_ceca", "ECA", "huggingface/pytorch-image-models (timm layers)", A.TimmCeca,
         A.ref_timm_ceca, ("channel",)),
    Case("mlca", "ECA", "wandahangFY/MLCA", B.MLCA, B.ref_mlca, ("a_hw", "channel")),
    Case("jongchan_cbam", "CBAM", "Jongchan/attention-module", B.JongchanCBAM,
         B.ref_jongchan_cbam, ("channel", "spatial"), identity=False,
         parts=("ChannelGate", "SpatialGate")),
    Case("luuuyi_resnet_cbam", "CBAM", "luuuyi/CBAM.PyTorch", B.CBAMBasicBlock,
         B.ref_cbam_basic, ("channel", "spatial"), identity=True, parts=("ca", "sa")),
    Case("timm_cbam", "CBAM", "huggingface/pytorch-image-models (timm layers)", B.TimmCbam,
         B.ref_timm_cbam, ("channel", "spatial")),
    Case("timm_light_cbam", "CBAM", "huggingface/pytorch-image-models (timm layers)",
         B.TimmLightCbam, B.ref_timm_light_cbam, ("channel", "spatial")),
    Case("ultralytics_cbam", "CBAM", "ultralytics/ultralytics", B.UltraCBAM, B.ref_ultra_cbam,
         ("channel", "spatial")),
    Case("bam", "BAM", "Jongchan/attention-module", B.BAM, B.ref_bam, ("a_hw",), identity=True),
    Case("scse", "scSE / parallel", "qubvel/segmentation_models.pytorch", B.SCSEModule,
         B.ref_scse, ("channel", "spatial"), identity=False, parts=("cSE", "sSE")),
    Case("parallel_psa", "scSE / parallel", "xmu-xiaoma666/External-Attention-pytorch",
         C.ParallelPSA, C.ref_psa, ("channel", "spatial"), identity=False),
    Case("attention_unet", "Attention U-Net gate", "LeeJunHyun/Image_Segmentation",
         lambda c: B.AttentionBlock(c, c, c // 2), B.ref_attention_unet, ("spatial",),
         net="gate"),
    Case("triplet", "Triplet", "landskape-ai/triplet-attention", B.TripletAttention,
         B.ref_triplet, ("spatial", "spatial#2", "spatial#3"), identity=False,
         parts=("cw", "hc", "hw")),
    Case("simam", "SimAM (parameter-free)", "ZjjConan/SimAM", B.SimAM, B.ref_simam, ("a_hw",)),
    Case("coordatt", "Coordinate", "houqb/CoordAttention", B.CoordAtt, B.ref_coordatt,
         ("a_h", "a_w"), identity=False),
    Case("coordatt_late_permute", "Coordinate", "YOLO attention collections (iscyy/yoloair)",
         B.CoordAttPermuteLate, B.ref_coordatt_late, ("a_w", "a_h")),
    Case("ela", "Coordinate", "AIFengheshu/Plug-play-modules (ELA)", B.ELA, B.ref_ela,
         ("a_h", "a_w")),
    Case("ema", "Grouped batch", "YOLO attention collections (iscyy/yoloair, EMA)", C.EMA,
         C.ref_ema, ("a_h", "a_w", "spatial")),
    Case("sge", "Grouped batch", "implus/PytorchInsight (SGE)", C.SpatialGroupEnhance, C.ref_sge,
         ("spatial",)),
    Case("shuffle_attention", "Grouped batch", "wofmanaf/SA-Net", C.ShuffleAttention,
         C.ref_shuffle, ("channel", "a_hw")),
    Case("sknet", "Selective kernel", "implus/SKNet", C.SKConv, C.ref_sk, ("select",),
         kind="select"),
    Case("sk_external", "Selective kernel", "xmu-xiaoma666/External-Attention-pytorch",
         C.SKAttention, C.ref_sk_external, ("select",)),
    Case("timm_sk", "Selective kernel", "huggingface/pytorch-image-models (timm layers)",
         C.TimmSelectiveKernel, C.ref_timm_sk, ("select",), parts=("attn",)),
    Case("resnest_split", "Selective kernel", "zhanghang1989/ResNeSt", C.SplitAttn, C.ref_split,
         ("select",), parts=("rsoftmax",)),
    Case("epsa", "Selective kernel", "murufeng/EPSANet", C.EPSANetStage, C.ref_epsa, ("select",),
         block="att.psa"),
    Case("lsk", "Selective kernel", "zcablii/LSKNet", C.LSKblock, C.ref_lsk, ("select",)),
    Case("gcnet", "Global context", "xvjiarui/GCNet", A.ContextBlock, A.ref_gc, ("channel",)),
    Case("timm_global_context", "Global context", "huggingface/pytorch-image-models (timm layers)",
         A.TimmGlobalContext, A.ref_timm_gc, ("channel",)),
    Case("timm_gather_excite", "Global context", "huggingface/pytorch-image-models (timm layers)",
         A.TimmGatherExcite, A.ref_timm_ge, ("a_hw",)),
]

NEGATIVES: list[Negative] = [
    Negative("token_self_attention", "huggingface/pytorch-image-models (vision_transformer)",
             C.TokenSelfAttention),
    Negative("conv_bn_silu", "ultralytics/ultralytics (Conv)", C.ConvStack),
    Negative("hswish_swish_gelu", "houqb/CoordAttention (h_swish), timm (hard_swish)",
             C.HSwishStack),
    Negative("gelu_tanh", "huggingface/transformers (NewGELUActivation)", C.GeluTanhStack),
    Negative("danet_pam", "junfu1115/DANet", C.PAMModule),
    Negative("lka", "Visual-Attention-Network (LKA)", C.LKA),
]


class Net(nn.Module):
    """stem -> the module -> head."""

    def __init__(self, att: nn.Module, c: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
        self.att = att
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.att(self.stem(x)))


class GateNet(Net):
    """An Attention U-Net style skip: att(g=gating signal, x=skip features)."""

    def __init__(self, att: nn.Module, c: int) -> None:
        super().__init__(att, c)
        self.gating = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(self.att(g=self.gating(s), x=s))


def perturb(net: nn.Module, seed: int = 0) -> None:
    """Weights and BN statistics away from their init, so masks are not trivially constant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, A.MultiSpectral):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))


def build(case: Case | Negative, c: int, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    att = case.build(c)
    net: nn.Module = GateNet(att, c) if isinstance(case, Case) and case.net == "gate" else Net(att, c)
    perturb(net, seed)
    return net.eval()


def batches(h: int, w: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randn(3, 3, h, w, generator=g), torch.randn(2, 3, h, w, generator=g)]


def block_inputs(net: nn.Module, name: str, x: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    module = dict(net.named_modules())[name]

    def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append((tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args),
                     {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}))

    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            net(x)
    finally:
        h.remove()
    return seen[0]


def _capture(net: nn.Module, spec: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def keep(call: Any) -> None:
        seen.update({k: v.clone() for k, v in call.masks.items()})

    with torch.inference_mode(), MaskCapture(net, [spec], keep):
        net(x)
    return seen


@dataclass
class Result:
    """What one check found (`problems` empty: passed)."""

    found: bool = False
    exact: bool = False
    problems: list[str] = field(default_factory=list)


def check(case: Case, size: tuple[str, int, int, int], validate: Callable[[dict[str, Any]], None]
          | None = None) -> Result:
    """Discover, capture and analyse `case` at `size`; compare with the hand computation."""
    _, c, h, w = size
    res = Result()
    net = build(case, c)
    xs = batches(h, w)
    specs = discover_blocks(net, xs[0])
    spec = next((s for s in specs if s.name == case.block), None)
    if spec is None:
        res.problems.append(f"block {case.block!r} not found; found {[s.name for s in specs]}")
        return res
    if len(specs) != 1:
        res.problems.append(f"extra blocks {[s.name for s in specs]}")
    if spec.masks != case.masks:
        res.problems.append(f"masks {spec.masks} != {case.masks}")
    if case.identity is not None and spec.identity_path != case.identity:
        res.problems.append(f"identity_path {spec.identity_path} != {case.identity}")
    if case.parts is not None and spec.parts != case.parts:
        res.problems.append(f"parts {spec.parts} != {case.parts}")
    if case.kind is not None and spec.kind != case.kind:
        res.problems.append(f"kind {spec.kind} != {case.kind}")
    res.found = not res.problems
    module = dict(net.named_modules())[case.block]
    refs: dict[str, list[torch.Tensor]] = {}
    for x in xs:
        args, kwargs = block_inputs(net, case.block, x)
        with torch.no_grad():
            ref = case.ref(module, *args, **kwargs)
        seen = _capture(net, spec, x)
        for name, r in ref.items():
            refs.setdefault(name, []).append(r)
            got = seen.get(name)
            if got is None:
                res.problems.append(f"{name} not captured")
            elif got.shape != r.shape:
                res.problems.append(f"{name} shape {tuple(got.shape)} != {tuple(r.shape)}")
            elif not torch.allclose(got, r, atol=1e-5, rtol=1e-4):
                res.problems.append(f"{name} differs by {float((got - r).abs().max()):.3g}")
    report = analyze_model(net, xs)
    if validate is not None:
        validate(report.to_dict())
    block = report.block(case.block)
    for name, parts in refs.items():
        flat = torch.cat([p.reshape(-1) for p in parts]).double()
        if float(flat.std()) < 1e-3:
            res.problems.append(f"{name}: the hand-computed mask is trivially constant")
        stats = block.masks.get(name)
        if stats is None:
            res.problems.append(f"{name} missing in the report")
            continue
        rows = torch.cat([p.reshape(p.shape[0] * p.shape[1], -1) for p in parts]).double()
        expect = {"count": flat.numel(), "mean": float(flat.mean()), "std": float(flat.std()),
                  "min": float(flat.min()), "max": float(flat.max())}
        if rows.shape[1] > 1:
            expect["pos_std"] = float(rows.std(dim=1, correction=0).mean())
        for key, value in expect.items():
            got_v = getattr(stats, key)
            if got_v is None or abs(float(got_v) - value) > TOL:
                res.problems.append(f"{name}.{key} {got_v} != {value:.6g}")
    res.exact = res.found and not res.problems
    return res


def check_negative(neg: Negative, size: tuple[str, int, int, int]) -> list[str]:
    _, c, h, w = size
    net = build(neg, c)
    specs = discover_blocks(net, batches(h, w)[0])
    return [s.name for s in specs]


def write_coverage(path: Path) -> int:
    """Run every check and write the coverage table; returns the number of failed checks."""
    families: dict[str, dict[str, Any]] = {}
    failed = 0
    for case in CASES:
        row = families.setdefault(case.family, {"sources": [], "n": 0, "found": 0, "exact": 0,
                                                "modules": []})
        if case.source not in row["sources"]:
            row["sources"].append(case.source)
        row["modules"].append(case.id)
        for size in SIZES:
            r = check(case, size)
            row["n"] += 1
            row["found"] += r.found
            row["exact"] += r.exact
            failed += not r.exact
            if r.problems:
                print(f"{case.id} {size[0]}: {'; '.join(r.problems)}", file=sys.stderr)
    neg_rows = []
    for neg in NEGATIVES:
        clean = sum(not check_negative(neg, size) for size in SIZES)
        failed += len(SIZES) - clean
        neg_rows.append((neg, clean))
    total_n = sum(r["n"] for r in families.values())
    total_found = sum(r["found"] for r in families.values())
    total_exact = sum(r["exact"] for r in families.values())
    sources = {s for r in families.values() for s in r["sources"]}
    lines = [
        "# Coverage: attention modules as public code writes them",
        "",
        "Generated by `python -m tests.wild.corpus` from the checks that `tests/wild/test_wild.py`",
        "runs (do not edit by hand). Each module of `tests/wild/` is written in the op sequence of",
        "the public code named (not copied), placed in a small net (stem, module, head) with",
        "perturbed weights, at two sizes: C = H = W = 16 (square maps, channels equal to height",
        "and width) and C = 16, H = 12, W = 10. A check is *found* when discovery reports exactly",
        "the expected block with the expected masks (names, kinds, parts, identity path where the",
        "module defines one); *exact* when, in addition, the captured masks equal the masks",
        "recomputed by hand in the test and the report's count, mean, std, min, max and",
        f"positional std match them within {TOL:g}.",
        "",
        f"{len(CASES)} modules, {len(families)} families, {len(sources)} sources; found "
        f"{total_found}/{total_n}, exact {total_exact}/{total_n}; negatives clean "
        f"{sum(c for _, c in neg_rows)}/{len(NEGATIVES) * len(SIZES)}.",
        "",
        "| family | where the pattern comes from | modules | found | exact |",
        "|---|---|---|---|---|",
    ]
    for fam, r in families.items():
        lines.append(f"| {fam} | {'; '.join(r['sources'])} | {', '.join(r['modules'])} | "
                     f"{r['found']}/{r['n']} | {r['exact']}/{r['n']} |")
    lines += [
        "",
        "Negatives (no block may be found):",
        "",
        "| module | where the pattern comes from | clean |",
        "|---|---|---|",
    ]
    for neg, clean in neg_rows:
        lines.append(f"| {neg.id} | {neg.source} | {clean}/{len(SIZES)} |")
    lines.append("")
    path.write_text("\n".join(lines))
    return failed


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/coverage.md")
    sys.exit(1 if write_coverage(out) else 0)
