"""Load a model from a checkpoint, safely by default.

Formats:

* a pickled `nn.Module` (`torch.save(model, f)`);
* a dict holding one under `ema` or `model` (a non-None `ema` is preferred: Ultralytics, timm and
  YOLOv5-style trainers save the EMA weights there);
* a state dict, bare or under `state_dict` / `model_state_dict` (or under `model` / `ema`), plus
  a model factory `pkg.mod:factory` (called with no arguments, or with JSON keyword arguments).

`torch.load(weights_only=True)` is tried first. When it refuses because the file pickles classes,
the error lists the classes the file references (read without importing anything, with
`torch.serialization.get_unsafe_globals_in_checkpoint`) and says that `trust=True` (`--trust`)
loads it with full pickle, which runs code from the file. The file is only ever read.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coordatt_diag.errors import CheckpointError, UsageError
from coordatt_diag.results import CheckpointInfo

_STATE_KEYS = ("state_dict", "model_state_dict")
_PREFIXES = ("module.", "model.", "_orig_mod.")


@dataclass
class LoadedModel:
    """A model ready to run, and what its file said about it."""

    model: nn.Module
    info: CheckpointInfo


def add_import_paths(paths: list[Path] | None, modules: list[str] | None) -> None:
    """Make the user's block classes importable: add `paths` to sys.path, import `modules`.

    Raises:
        CheckpointError: a module cannot be imported.
    """
    for p in paths or []:
        if not Path(p).is_dir():
            raise UsageError(f"--path {p} is not a directory")
        if str(p) not in sys.path:
            sys.path.insert(0, str(Path(p).resolve()))
    for mod in modules or []:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise CheckpointError(
                f"cannot import module {mod!r} ({exc}): add its folder with --path DIR"
            ) from exc


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in names) or any(
        n.endswith("archive_format") or "/serialized_exported_program" in n for n in names
    )


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - listing is best effort (legacy format files)
        return []


def _refusal(path: Path, exc: Exception) -> CheckpointError:
    # the file's own classes first: torch's are rarely the news
    classes = sorted(_unsafe_globals(path), key=lambda c: (c.startswith("torch."), c))
    if classes:
        shown = ", ".join(classes[:12]) + (
            f" and {len(classes) - 12} more" if len(classes) > 12 else "")
        what = f"it pickles classes ({shown})"
    else:
        detail = str(exc).strip().splitlines()
        what = f"safe loading refused it ({detail[-1] if detail else type(exc).__name__})"
    return CheckpointError(
        f"{path} was not loaded: {what}; pass --trust to load it with full pickle, which runs "
        "code from the file (only for files you trust)"
    )


def _missing_class_error(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc)
    mod = re.search(r"No module named '([^']+)'", text)
    if mod:
        name = mod.group(1)
        hint = (" (pip install ultralytics)" if name.split(".")[0] == "ultralytics" else "")
        return CheckpointError(
            f"{path} needs module {name!r}, which is not importable{hint}: install it, or make "
            "it importable with --path DIR and --import MODULE"
        )
    attr = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", text)
    if attr:
        return CheckpointError(
            f"{path} needs class {attr.group(1)!r} from module {attr.group(2)!r}, which does not "
            "define it: import the module that does with --import MODULE (and --path DIR)"
        )
    return CheckpointError(f"{path} could not be unpickled ({text}): check --import / --path")


def read_checkpoint(path: Path, trust: bool = False) -> Any:
    """`torch.load` the file on the CPU, safely unless `trust`.

    Raises:
        CheckpointError: missing, unreadable, corrupt or truncated file; a TorchScript or
            torch.export archive; a refused pickle; a missing module or class.
    """
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript or torch.export archive: hooks cannot see inside compiled "
            "graphs; pass the eager model's checkpoint (torch.save(model) or a state dict with "
            "--model) instead"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols and FutureWarnings on every legacy file
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust and "Weights only load failed" in str(exc) and not _looks_corrupt(exc):
            raise _refusal(path, exc) from exc
        raise _corrupt(path, exc) from exc
    except (ModuleNotFoundError, AttributeError) as exc:
        raise _missing_class_error(path, exc) from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            UnicodeDecodeError, IndexError, KeyError) as exc:
        raise _corrupt(path, exc) from exc


def _looks_corrupt(exc: Exception) -> bool:
    text = str(exc)
    return any(s in text for s in ("truncated", "invalid load key", "EOF", "unpickling stack"))


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {first[:200]}"
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _pick(obj: Any) -> tuple[str, Any]:
    """Find the model (or its state dict) inside what torch.load returned."""
    if isinstance(obj, nn.Module):
        return "module", obj
    if _is_state_dict(obj):
        return "state_dict", obj
    if isinstance(obj, Mapping):
        for key in ("ema", "model"):
            value = obj.get(key)
            if isinstance(value, nn.Module):
                return f"dict:{key}", value
        for key in (*_STATE_KEYS, "ema", "model"):
            value = obj.get(key)
            if _is_state_dict(value):
                return "state_dict", value
            if isinstance(value, Mapping) and _is_state_dict(value.get("state_dict")):
                return "state_dict", value["state_dict"]
        keys = ", ".join(sorted(map(str, obj))[:12])
        raise CheckpointError(
            f"the checkpoint is a dict without a model or state dict (keys: {keys}); expected "
            "'ema', 'model', 'state_dict' or 'model_state_dict'"
        )
    raise CheckpointError(
        f"the checkpoint holds a {type(obj).__name__}, not a model or a state dict"
    )


def build_from_factory(spec: str, args_json: str | None) -> nn.Module:
    """Call `pkg.mod:factory` (with the JSON keyword arguments, if any) and return the model."""
    if ":" not in spec:
        raise UsageError(f"--model {spec!r} must look like pkg.module:factory")
    mod_name, _, attr = spec.partition(":")
    kwargs: dict[str, Any] = {}
    if args_json:
        try:
            kwargs = json.loads(args_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--model-args is not valid JSON: {exc}") from exc
        if not isinstance(kwargs, dict):
            raise UsageError("--model-args must be a JSON object of keyword arguments")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise CheckpointError(
            f"cannot import {mod_name!r} for --model ({exc}): add its folder with --path DIR"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise CheckpointError(f"module {mod_name!r} has no callable {attr!r} for --model")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UsageError(f"--model {spec} could not be called with {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"--model {spec} returned a {type(model).__name__}, not an nn.Module")
    return model


def _strip_prefix(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    keys = list(state)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) & expected:
                return stripped
        if any(k.startswith(prefix) for k in keys) and not set(keys) & expected:
            # Lightning: the model's keys carry the attribute name as prefix, other entries not
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(sub) >= expected:
                return sub
    return dict(state)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """`load_state_dict(strict=True)` with common prefixes (module., model.) removed.

    Raises:
        CheckpointError: the keys or shapes do not match the model.
    """
    expected = set(model.state_dict())
    state = _strip_prefix(state, expected)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if not parts:
            shape = str(exc).strip().splitlines()
            parts.append(shape[1].strip() if len(shape) > 1 else shape[0])
        raise CheckpointError(
            "the state dict does not fit the --model factory: " + "; ".join(parts)
        ) from exc


def load_model(
    path: Path,
    trust: bool = False,
    factory: str | None = None,
    factory_args: str | None = None,
) -> LoadedModel:
    """Load the model in `path`, in float32, in eval mode.

    Args:
        path: the checkpoint file.
        trust: load with full pickle (runs code from the file).
        factory: `pkg.mod:factory` that builds the model for a state dict.
        factory_args: JSON object of keyword arguments for the factory.

    Returns:
        The model and the checkpoint's facts (format, sha256, epoch).

    Raises:
        CheckpointError, UsageError: see `read_checkpoint`, `build_from_factory`, `load_state`.
    """
    obj = read_checkpoint(path, trust=trust)
    fmt, found = _pick(obj)
    if fmt == "state_dict":
        if factory is None:
            raise CheckpointError(
                f"{path} holds a state dict ({len(found)} tensors) but no model: pass "
                "--model pkg.module:factory to build the model it belongs to"
            )
        model = build_from_factory(factory, factory_args)
        load_state(model, found)
    else:
        model = found
        if factory is not None:
            raise UsageError(f"{path} holds a whole model; --model is only for state dicts")
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path} does not hold an nn.Module")
    if isinstance(model, torch.jit.ScriptModule):
        raise CheckpointError(
            f"{path} holds a TorchScript module: hooks cannot see inside it; pass the eager model"
        )
    model = model.float().eval()
    epoch = None
    extra: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        raw_epoch = obj.get("epoch")
        if isinstance(raw_epoch, int) and not isinstance(raw_epoch, bool):
            epoch = raw_epoch
        for key in ("date", "version", "train_args", "meta"):
            if key in obj and _jsonable(obj[key]):
                extra[key] = obj[key]
    info = CheckpointInfo(path=str(path), sha256=sha256_of(path), format=fmt, epoch=epoch,
                          extra=extra)
    return LoadedModel(model=model, info=info)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
