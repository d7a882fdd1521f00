"""Make REAL third-party checkpoints for the integration tests, offline, in a few minutes on CPU.

Run with the integration venv's python (scripts/integration-env.sh prints its path):

    VENV=$(bash scripts/integration-env.sh | tail -n 1)
    "$VENV/bin/python" tests/integration/make_checkpoints.py [OUT] [--force] [--only yolo,timm]

OUT defaults to ${COORDATT_DIAG_CACHE:-~/.cache/coordatt-diag}/integration-ckpts (never inside
the repository). What it writes there:

* ``data/``: a generated detection dataset (coloured rectangles on noise, YOLO txt labels,
  ``data.yaml``);
* ``yolo/<variant>/weights/{last,best,epoch0,epoch1}.pt``: Ultralytics training runs of tiny
  YOLO models (YAMLs in ``yolo/models/``) with a user-written ``custom_blocks.CoordAtt``
  (variant ``coordatt``) and Ultralytics' built-in ``CBAM`` (variant ``cbam``);
* ``timm/``: timm ResNet-18-layout models with ``attn_layer`` coord, scoord, ela, strip, se, eca,
  cbam, lcbam, and a MobileViT-XXS with coord: each pickled whole (``torch.save(model)``) and as
  a state dict (factories in ``timm_factories.py``), plus one ``.safetensors``;
* ``lightning/small_coordnet.ckpt``: a Lightning checkpoint (state dict keys ``model.*``) of
  ``custom_blocks.SmallCoordNet`` trained one step (if lightning is installed);
* ``manifest.json``, written last: every file with its kind, how to load it, the attention
  blocks expected in it (names as in ``model.named_modules()`` of the model the file holds) and
  the masks each block has. Its presence with a matching ``stamp`` means "complete and up to
  date"; rerunning then does nothing unless ``--force``.

Network access is blocked in-process for the whole run (``netblock/sitecustomize.py``); any
attempt, even one a library swallows, fails the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
OWNER_MARK = ".coordatt-diag-integration-ckpts"
IMGSZ = 64
NUM_CLASSES = 3  # detection classes (red, green, blue rectangles)
TIMM_CLASSES = 10
COLORS = ((220, 40, 40), (40, 200, 60), (40, 80, 230))

# mask kinds: a_h (N,C,H,1), a_w (N,C,1,W), a_hw (N,C,H,W), channel (N,C,1,1), spatial (N,1,H,W)
MASKS_BY_CLASS: dict[str, list[str]] = {
    "custom_blocks.CoordAtt": ["a_h", "a_w"],
    "ultralytics.nn.modules.conv.CBAM": ["channel", "spatial"],
    "timm.layers.coord_attn.CoordAttn": ["a_h", "a_w"],
    "timm.layers.coord_attn.SimpleCoordAttn": ["a_hw"],
    "timm.layers.coord_attn.EfficientLocalAttn": ["a_h", "a_w"],
    "timm.layers.coord_attn.StripAttn": ["a_hw"],
    "timm.layers.squeeze_excite.SEModule": ["channel"],
    "timm.layers.eca.EcaModule": ["channel"],
    "timm.layers.cbam.CbamModule": ["channel", "spatial"],
    "timm.layers.cbam.LightCbamModule": ["channel", "spatial"],
}
# how each block gates (for the tests' expectations; from the installed sources)
GATE_BY_CLASS: dict[str, str] = {
    "custom_blocks.CoordAtt": "tensor.sigmoid() method on conv_h/conv_w outputs",
    "ultralytics.nn.modules.conv.CBAM": "nn.Sigmoid modules: channel_attention.act, "
    "spatial_attention.act",
    "timm.layers.coord_attn.CoordAttn": "gate = timm.layers.activations.Sigmoid module "
    "(forward: x.sigmoid())",
    "timm.layers.coord_attn.SimpleCoordAttn": "gate = timm Sigmoid module on (a_h + a_w) logits",
    "timm.layers.coord_attn.EfficientLocalAttn": "gate = timm Sigmoid module",
    "timm.layers.coord_attn.StripAttn": "gate = timm Sigmoid module on (x_h + x_w)",
    "timm.layers.squeeze_excite.SEModule": "gate = timm Sigmoid module",
    "timm.layers.eca.EcaModule": "gate = timm Sigmoid module on a (N,1,C) Conv1d output, "
    "then .view(N,C,1,1).expand_as(x)",
    "timm.layers.cbam.CbamModule": "channel.gate and spatial.gate = timm Sigmoid modules",
    "timm.layers.cbam.LightCbamModule": "channel: F.sigmoid (functional); "
    "spatial.gate = timm Sigmoid module",
}

YOLO_YAML = """\
# tiny YOLOv8-style detector; width_multiple 1.0 because parse_model passes the arguments of
# modules it does not know (CoordAtt, CBAM) through unchanged: their channel count is literal.
nc: {nc}
depth_multiple: 1.0
width_multiple: 1.0
backbone:
  - [-1, 1, Conv, [16, 3, 2]]  # 0 P1/2
  - [-1, 1, Conv, [32, 3, 2]]  # 1 P2/4
  - [-1, 1, C2f, [32, True]]  # 2
  - [-1, 1, Conv, [64, 3, 2]]  # 3 P3/8
  - [-1, 1, C2f, [64, True]]  # 4
  - [-1, 1, {block}, [64{extra}]]  # 5 attention on P3
  - [-1, 1, Conv, [128, 3, 2]]  # 6 P4/16
  - [-1, 1, C2f, [128, True]]  # 7
  - [-1, 1, {block}, [128{extra}]]  # 8 attention on P4
  - [-1, 1, SPPF, [128, 5]]  # 9
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]  # 10
  - [[-1, 5], 1, Concat, [1]]  # 11 cat P3
  - [-1, 1, C2f, [64]]  # 12 (P3/8)
  - [-1, 1, Conv, [64, 3, 2]]  # 13
  - [[-1, 9], 1, Concat, [1]]  # 14 cat P4
  - [-1, 1, C2f, [128]]  # 15 (P4/16)
  - [[12, 15], 1, Detect, [nc]]  # 16
"""
YOLO_VARIANTS = {
    # variant: (YAML module name, extra YAML args, block class qualname)
    "coordatt": ("CoordAtt", "", "custom_blocks.CoordAtt"),
    "cbam": ("CBAM", ", 7", "ultralytics.nn.modules.conv.CBAM"),
}


def log(msg: str) -> None:
    print(f"[make_checkpoints] {msg}", flush=True)


def default_out() -> Path:
    cache = os.environ.get("COORDATT_DIAG_CACHE") or str(Path.home() / ".cache" / "coordatt-diag")
    return Path(cache) / "integration-ckpts"


def load_netblock() -> Any:
    spec = importlib.util.spec_from_file_location(
        "coordatt_diag_netblock", HERE / "netblock" / "sitecustomize.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def setup_environment(out: Path, verbose: bool) -> None:
    """Environment for offline, quiet, reproducible runs; must run before importing ultralytics."""
    cfg = out / "ultralytics-config"
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"  # is_online() -> False without a DNS look-up
    os.environ["YOLO_AUTOINSTALL"] = "false"  # check_requirements never pip-installs
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)  # settings.json, fonts: not in ~/.config
    os.environ["YOLO_VERBOSE"] = "true" if verbose else "false"
    if verbose:
        os.environ["COORDATT_DIAG_VERBOSE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # ultralytics sets 1
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    sys.path.insert(0, str(HERE))  # custom_blocks, timm_factories (pickled as top-level modules)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "ultralytics", "timm", "safetensors", "lightning"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


def compute_stamp(only: list[str], epochs: int) -> str:
    h = hashlib.sha256()
    for f in ("make_checkpoints.py", "custom_blocks.py", "timm_factories.py"):
        h.update((HERE / f).read_bytes())
    h.update(json.dumps([package_versions(), sorted(only), epochs]).encode())
    return h.hexdigest()[:16]


def class_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def find_blocks(model: Any, classes: set[str]) -> list[dict[str, Any]]:
    """The attention blocks of ``model``: modules of one of ``classes``, outermost only."""
    blocks: list[dict[str, Any]] = []
    for name, mod in model.named_modules():
        cls = class_name(mod)
        if cls not in classes:
            continue
        if any(name.startswith(b["name"] + ".") for b in blocks):
            continue
        blocks.append({"name": name, "class": cls, "masks": MASKS_BY_CLASS[cls],
                       "gate": GATE_BY_CLASS[cls]})
    return blocks


def unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as exc:  # not a zip checkpoint (e.g. safetensors)
        return [f"<n/a: {type(exc).__name__}>"]


# ---------------------------------------------------------------------------------------- data


def make_dataset(root: Path, n_train: int = 48, n_val: int = 16, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(90, 160, size=(IMGSZ, IMGSZ, 3), dtype=np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                cls = int(rng.integers(0, NUM_CLASSES))
                w, h = (int(v) for v in rng.integers(12, 30, size=2))
                x0 = int(rng.integers(0, IMGSZ - w))
                y0 = int(rng.integers(0, IMGSZ - h))
                img[y0:y0 + h, x0:x0 + w] = COLORS[cls]
                lines.append(f"{cls} {(x0 + w / 2) / IMGSZ:.6f} {(y0 + h / 2) / IMGSZ:.6f} "
                             f"{w / IMGSZ:.6f} {h / IMGSZ:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{split}_{i:03d}.png")
            (root / "labels" / split / f"{split}_{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {root}\ntrain: images/train\nval: images/val\n"
        f"names:\n  0: red\n  1: green\n  2: blue\n"
    )
    return data_yaml


# ---------------------------------------------------------------------------------------- yolo


def prepare_ultralytics() -> None:
    # check_det_dataset() always calls check_font('Arial.ttf'): found in USER_CONFIG_DIR
    # ($YOLO_CONFIG_DIR/Ultralytics) it is not fetched from github.com (otherwise a HEAD request
    # goes out even with plots=False and YOLO_OFFLINE=1). Any TTF will do: plots are off.
    import matplotlib
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    font = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if not font.exists():
        src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copyfile(src, font)

    SETTINGS.update({"sync": False, "clearml": False, "comet": False, "dvc": False,
                     "mlflow": False, "raytune": False, "tensorboard": False, "wandb": False})
    import custom_blocks

    custom_blocks.register_with_ultralytics()


def train_yolo(out: Path, data_yaml: Path, epochs: int) -> list[dict[str, Any]]:
    import torch
    from ultralytics import YOLO

    entries: list[dict[str, Any]] = []
    models_dir = out / "yolo" / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    for variant, (block, extra, qualname) in YOLO_VARIANTS.items():
        t0 = time.time()
        yaml_path = models_dir / f"tiny-{variant}.yaml"
        yaml_path.write_text(YOLO_YAML.format(nc=NUM_CLASSES, block=block, extra=extra))
        # expected names from the YAML: layer i of a DetectionModel is named model.{i}
        expected = [f"model.{i}" for i in (5, 8)]
        model = YOLO(str(yaml_path), task="detect")
        model.train(
            data=str(data_yaml), epochs=epochs, imgsz=IMGSZ, batch=8, workers=0, device="cpu",
            save_period=1, plots=False, amp=False, val=False, project=str(out / "yolo"),
            name=variant, exist_ok=True, seed=0, deterministic=True, cache=False,
            verbose=False, close_mosaic=0, pretrained=False,
            nbs=8,  # nominal batch = batch: an optimizer step per batch, not one per 64 images
        )
        wdir = out / "yolo" / variant / "weights"
        files = sorted(wdir.glob("*.pt"))
        log(f"yolo {variant}: trained {epochs} epochs in {time.time() - t0:.1f}s: "
            f"{[f.name for f in files]}")
        for f in files:
            ckpt = torch.load(f, map_location="cpu", weights_only=False)
            key = "ema" if ckpt.get("ema") is not None else "model"
            net = ckpt[key]
            blocks = find_blocks(net, {qualname})
            names = [b["name"] for b in blocks]
            if names != expected:
                raise SystemExit(f"{f}: attention blocks {names}, expected {expected}")
            kind = "ultralytics-epoch" if f.stem.startswith("epoch") else f"ultralytics-{f.stem}"
            entries.append({
                "path": str(f.relative_to(out)),
                "kind": kind,
                "format": "torch-pickle",
                "needs_trust": True,
                "imports": ["custom_blocks"] if variant == "coordatt" else [],
                "model_key": key,
                "model_class": class_name(net),
                "dtype": str(next(net.parameters()).dtype).replace("torch.", ""),
                "stripped": ckpt.get("optimizer") is None,
                "keys": {k: (None if v is None else type(v).__name__) for k, v in ckpt.items()},
                "epoch": ckpt.get("epoch"),
                "input": {"imgsz": IMGSZ, "channels": 3, "normalize": "unit"},
                "expected_block_count": len(blocks),
                "blocks": blocks,
                "unsafe_globals": unsafe_globals(f),
            })
    return entries


# ---------------------------------------------------------------------------------------- timm


def _train_steps(model: Any, steps: int = 3, seed: int = 0) -> None:
    """A few SGD steps on random data: BN running stats and weights move off their init."""
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, IMGSZ, IMGSZ, generator=g)
        y = torch.randint(0, TIMM_CLASSES, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def make_timm(out: Path) -> list[dict[str, Any]]:
    import timm_factories
    import torch
    from safetensors.torch import save_file

    tdir = out / "timm"
    tdir.mkdir(parents=True, exist_ok=True)
    classes = {c for c in MASKS_BY_CLASS if c.startswith("timm.")}
    specs = [(f"resnet18_{a}", 8) for a in timm_factories.ATTN_TYPES]
    specs.append(("mobilevit_xxs_coord", 7))
    entries: list[dict[str, Any]] = []
    for fn_name, n_expected in specs:
        t0 = time.time()
        torch.manual_seed(0)
        model = getattr(timm_factories, fn_name)(num_classes=TIMM_CLASSES)
        _train_steps(model)
        blocks = find_blocks(model, classes)
        if len(blocks) != n_expected:
            raise SystemExit(f"{fn_name}: {len(blocks)} attention blocks, expected {n_expected}")
        common = {
            "input": {"imgsz": IMGSZ, "channels": 3, "normalize": "imagenet"},
            "expected_block_count": len(blocks),
            "blocks": blocks,
            "model_class": class_name(model),
            "dtype": "float32",
        }
        pickled = tdir / f"{fn_name}.pt"
        torch.save(model, pickled)
        entries.append({"path": str(pickled.relative_to(out)), "kind": "timm-pickled-module",
                        "format": "torch-pickle", "needs_trust": True, "imports": [],
                        **common, "unsafe_globals": unsafe_globals(pickled)})
        state = tdir / f"{fn_name}.state_dict.pt"
        torch.save(model.state_dict(), state)
        factory = {"factory": f"timm_factories:{fn_name}",
                   "model_args": {"num_classes": TIMM_CLASSES}}
        entries.append({"path": str(state.relative_to(out)), "kind": "timm-state-dict",
                        "format": "torch-state-dict", "needs_trust": False, "imports": [],
                        **factory, **common, "unsafe_globals": unsafe_globals(state)})
        if fn_name == "resnet18_coord":
            st = tdir / f"{fn_name}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
            entries.append({"path": str(st.relative_to(out)), "kind": "safetensors-state-dict",
                            "format": "safetensors", "needs_trust": False, "imports": [],
                            **factory, **common})
        log(f"timm {fn_name}: {len(blocks)} blocks, {time.time() - t0:.1f}s")
    return entries


# ----------------------------------------------------------------------------------- lightning


def make_lightning(out: Path) -> list[dict[str, Any]]:
    try:
        import lightning as L
    except ImportError:
        log("lightning is not installed: no Lightning checkpoint")
        return []
    import custom_blocks
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class CoordNetModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = custom_blocks.small_coord_cnn(num_classes=TIMM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    if not os.environ.get("COORDATT_DIAG_VERBOSE"):
        import logging
        import warnings

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="lightning")
    t0 = time.time()
    torch.manual_seed(0)
    ldir = out / "lightning"
    ldir.mkdir(parents=True, exist_ok=True)
    data = TensorDataset(torch.randn(16, 3, IMGSZ, IMGSZ), torch.randint(0, TIMM_CLASSES, (16,)))
    module = CoordNetModule()
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(ldir),
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    ckpt_path = ldir / "small_coordnet.ckpt"
    trainer.save_checkpoint(str(ckpt_path))
    blocks = find_blocks(module.model, {"custom_blocks.CoordAtt"})
    if [b["name"] for b in blocks] != ["features.2", "features.4"]:
        raise SystemExit(f"lightning: unexpected blocks {blocks}")
    keys = sorted(torch.load(ckpt_path, map_location="cpu", weights_only=False))
    log(f"lightning: {ckpt_path.name} in {time.time() - t0:.1f}s")
    return [{
        "path": str(ckpt_path.relative_to(out)), "kind": "lightning-ckpt",
        "format": "torch-state-dict", "needs_trust": False, "imports": ["custom_blocks"],
        "factory": "custom_blocks:small_coord_cnn", "model_args": {"num_classes": TIMM_CLASSES},
        "state_dict_key": "state_dict", "state_dict_prefix": "model.", "keys": keys,
        "input": {"imgsz": IMGSZ, "channels": 3, "normalize": "unit"},
        "model_class": "custom_blocks.SmallCoordNet", "dtype": "float32",
        "expected_block_count": len(blocks), "blocks": blocks,
        "unsafe_globals": unsafe_globals(ckpt_path),
    }]


# ---------------------------------------------------------------------------------------- main


def prepare_out(out: Path, force: bool) -> None:
    """Empty ``out`` (only if it is ours or empty), then mark it as ours."""
    if out.exists():
        ours = (out / OWNER_MARK).exists() or (out / MANIFEST).exists()
        if not ours and any(out.iterdir()):
            raise SystemExit(f"{out} exists, is not empty and was not made by this script")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / OWNER_MARK).write_text("made by tests/integration/make_checkpoints.py\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=None,
                    help="output folder (default: $COORDATT_DIAG_CACHE/integration-ckpts)")
    ap.add_argument("--only", default="yolo,timm,lightning",
                    help="comma-separated subset of yolo,timm,lightning")
    ap.add_argument("--epochs", type=int, default=2, help="YOLO training epochs (default 2)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--allow-network", action="store_true", help="do not block sockets")
    ap.add_argument("--verbose", action="store_true", help="Ultralytics/Lightning logging")
    args = ap.parse_args(argv)
    out = (args.out or default_out()).expanduser().resolve()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - {"yolo", "timm", "lightning"}
    if unknown:
        ap.error(f"unknown --only parts: {sorted(unknown)}")
    repo = HERE.parent.parent
    if out == repo or repo in out.parents:
        ap.error(f"{out} is inside the repository; checkpoints stay out of it")

    stamp = compute_stamp(only, args.epochs)
    manifest_path = out / MANIFEST
    if manifest_path.exists() and not args.force:
        try:
            if json.loads(manifest_path.read_text()).get("stamp") == stamp:
                log(f"up to date: {manifest_path}")
                print(manifest_path)
                return 0
        except (OSError, ValueError):
            pass

    netblock = None if args.allow_network else load_netblock()
    if netblock is not None:
        netblock.install()
    t_start = time.time()
    prepare_out(out, args.force)
    setup_environment(out, args.verbose)
    os.chdir(out)  # Ultralytics records git info of the cwd (GIT) in every checkpoint

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    timings: dict[str, float] = {}
    entries: list[dict[str, Any]] = []
    if "yolo" in only:
        t0 = time.time()
        data_yaml = make_dataset(out / "data")
        prepare_ultralytics()
        entries += train_yolo(out, data_yaml, args.epochs)
        timings["yolo"] = round(time.time() - t0, 1)
    if "timm" in only:
        t0 = time.time()
        entries += make_timm(out)
        timings["timm"] = round(time.time() - t0, 1)
    if "lightning" in only:
        t0 = time.time()
        entries += make_lightning(out)
        timings["lightning"] = round(time.time() - t0, 1)
    timings["total"] = round(time.time() - t_start, 1)

    if netblock is not None and netblock.ATTEMPTS:
        for a in netblock.ATTEMPTS:
            log(f"network attempt: {a}")
        raise SystemExit(f"{len(netblock.ATTEMPTS)} network access attempt(s); see above")

    manifest = {
        "version": 1,
        "stamp": stamp,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": package_versions(),
        "import_path": str(HERE),
        "network_blocked": netblock is not None,
        "timings_s": timings,
        "mask_kinds": {
            "a_h": "(N,C,H,1)", "a_w": "(N,C,1,W)", "a_hw": "(N,C,H,W)",
            "channel": "(N,C,1,1)", "spatial": "(N,1,H,W)",
        },
        "files": entries,
    }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    log(f"{len(entries)} files, timings {timings}")
    print(manifest_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
