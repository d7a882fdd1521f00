"""Load a model from a checkpoint, safely by default.

Formats:

* a pickled `nn.Module` (`torch.save(model, f)`);
* a dict holding one under `ema` or `model` (a non-None `ema` is preferred: Ultralytics, timm and
  YOLOv5-style trainers save the EMA weights there);
* a state dict, bare or under `state_dict` / `model_state_dict` (or under `model` / `ema`), plus
  a model factory `pkg.mod:factory` (called with no arguments, or with JSON keyword arguments);
* an Ultralytics YOLO checkpoint (`last.pt`, `best.pt`, `epochN.pt`): the dict above with
  `model` (half precision, None in epoch files) or `ema`, `epoch` (-1 in the final, stripped
  files), `train_args`, `date`, `version`; the model runs in float32;
* a Lightning `.ckpt`: `state_dict` whose keys carry the LightningModule's attribute name
  (`model.`), plus `--model`;
* a `.safetensors` state dict, read with the `safetensors` package (no pickle: safe without
  `trust`), plus `--model`.

TorchScript and `torch.export` archives are refused: hooks only see the modules of an eager
model, and a compiled graph has none.

`torch.load(weights_only=True)` is tried first. When it refuses because the file pickles classes,
the error lists the classes the file references (read without importing anything, with
`torch.serialization.get_unsafe_globals_in_checkpoint`) and says that `trust=True` (`--trust`)
loads it with full pickle, which runs code from the file. The file is only ever read.

Before a trusted unpickle the packages the file's classes come from are imported, so a missing
one (typically `ultralytics`) is named with its install command. Importing Ultralytics must not
reach the network, print to stdout or write to the user's home: `YOLO_OFFLINE`,
`YOLO_AUTOINSTALL`, `YOLO_VERBOSE` and a temporary `YOLO_CONFIG_DIR` are set first, each only
where the user has not set it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from coordatt_diag.errors import (
    CheckpointError,
    InputError,
    UsageError,
    one_line,
    opt,
    show_path,
)
from coordatt_diag.results import CheckpointInfo, PathArg

_STATE_KEYS = ("state_dict", "model_state_dict")
_PREFIXES = ("module.", "model.", "_orig_mod.")
SAFETENSORS_SUFFIX = ".safetensors"
#: pip command for the packages checkpoints commonly pickle classes from (by top-level module)
INSTALL_HINTS = {
    "ultralytics": "pip install ultralytics",
    "timm": "pip install timm",
    "lightning": "pip install lightning",
    "pytorch_lightning": "pip install pytorch-lightning",
    "torchvision": "pip install torchvision",
    "safetensors": "pip install safetensors",
}
#: Ultralytics reads these at import time (ultralytics/utils/__init__.py): offline, no pip, quiet
#: (its log handler writes to stdout, which `--json -` keeps for the report), and settings.json
#: in a folder of ours rather than ~/.config/Ultralytics.
_OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_VERBOSE": "0"}
_CHECKPOINT_FACTS = ("date", "version", "train_args", "meta", "global_step",
                     "pytorch-lightning_version", "hyper_parameters")


@dataclass
class LoadedModel:
    """A model ready to run, and what its file said about it."""

    model: nn.Module
    info: CheckpointInfo


def offline_third_party_env() -> dict[str, str]:
    """Keep third-party imports (Ultralytics) offline, quiet and out of the user's home folder.

    Sets `YOLO_OFFLINE=1`, `YOLO_AUTOINSTALL=0`, `YOLO_VERBOSE=0` and `YOLO_CONFIG_DIR` (a
    temporary folder, removed at exit) in `os.environ`, each only where it is not set already:
    a user's own settings win.

    Returns:
        The variables this call set (empty when all were set already).
    """
    added: dict[str, str] = {}
    for key, value in _OFFLINE_ENV.items():
        if key not in os.environ:
            os.environ[key] = added[key] = value
    if "YOLO_CONFIG_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="coordatt-diag-ultralytics-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ["YOLO_CONFIG_DIR"] = added["YOLO_CONFIG_DIR"] = folder
    return added


def _stdout_to_stderr() -> contextlib.AbstractContextManager[Any]:
    # Third-party packages print while importing (and Ultralytics binds its log handler to
    # whatever sys.stdout is then): stdout is for the report alone.
    return contextlib.redirect_stdout(sys.stderr)


def add_import_paths(paths: Sequence[PathArg] | None, modules: Sequence[str] | None) -> None:
    """Make the user's block classes importable: add `paths` to sys.path, import `modules`.

    Raises:
        CheckpointError: a module cannot be imported.
    """
    for p in paths or []:
        if not Path(p).is_dir():
            raise UsageError(f"{opt('paths', p)} is not a directory")
        if str(p) not in sys.path:
            sys.path.insert(0, str(Path(p).resolve()))
    if modules:
        # a user's block module often imports ultralytics to register itself there
        offline_third_party_env()
    for mod in modules or []:
        try:
            with _stdout_to_stderr():
                importlib.import_module(mod)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module fails to import
            if not isinstance(exc, ImportError):
                raise CheckpointError(
                    f"importing module {mod!r} ({opt('imports')}) raised {type(exc).__name__}: "
                    f"{one_line(str(exc), 200)}"
                ) from exc
            top = (getattr(exc, "name", None) or "").split(".")[0]
            hint = f" ({INSTALL_HINTS[top]})" if top in INSTALL_HINTS else ""
            raise CheckpointError(
                f"cannot import module {mod!r} ({exc}){hint}: add its folder with {opt('paths', 'DIR')}"
            ) from exc


#: The name a training script is imported under: anything but "__main__", so that its
#: `if __name__ == "__main__":` block (the training run) does not execute.
MAIN_MODULE_NAME = "coordatt_diag_user_main"


#: Calls a script may make at its top level without doing work: constants, paths, devices, type
#: helpers (an assignment that calls anything else, `history = fit(model)`, counts as work).
_QUIET_CALLS = frozenset({
    "Path", "pathlib.Path", "os.path.join", "os.path.dirname", "os.path.abspath", "os.getenv",
    "os.environ.get", "torch.device", "torch.cuda.is_available", "logging.getLogger",
    "re.compile", "TypeVar", "typing.TypeVar", "namedtuple", "collections.namedtuple", "field",
    "dataclasses.field", "partial", "functools.partial", "dict", "list", "tuple", "set",
    "frozenset", "int", "float", "str", "bool", "range", "len", "getattr",
})


def unguarded_code(source: str) -> list[tuple[int, str]]:
    """Top-level statements of a script that would do work when it is imported.

    Imports, definitions, docstrings, the `if __name__ == "__main__":` block and assignments of
    constants (calling at most `_QUIET_CALLS`: `Path(...)`, `torch.device(...)`, ...) are what
    a module of classes holds; a call, loop or `with` at the top level, or an assignment that
    calls anything else (inside a top-level `if`/`try` too, other than that block), runs on
    import, typically the training itself.

    Returns:
        (line number, first line of the statement) for each such statement.
    """
    import ast

    tree = ast.parse(source)
    lines = source.splitlines()
    found: list[tuple[int, str]] = []

    def is_main_guard(node: ast.If) -> bool:
        test = node.test
        return (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.Eq)
                and {ast.unparse(test.left), ast.unparse(test.comparators[0])}
                <= {"__name__", "'__main__'", '"__main__"'})

    def calls_only_quiet(node: ast.AST | None) -> bool:
        if node is None:
            return True
        return all(ast.unparse(call.func) in _QUIET_CALLS
                   for call in ast.walk(node) if isinstance(call, ast.Call))

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                                 ast.ClassDef, ast.Pass, ast.Global, ast.Delete)):
                continue
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) \
                    and calls_only_quiet(node.value):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # a docstring
            if isinstance(node, ast.If):
                if not is_main_guard(node):
                    visit(node.body)
                    visit(node.orelse)
                continue
            if isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
                continue
            found.append((node.lineno, lines[node.lineno - 1].strip()))

    visit(tree.body)
    return found


def load_main_module(script: PathArg) -> ModuleType:
    """Import a training script as the source of the classes a checkpoint pickled under
    `__main__` (`torch.save(model)` in `train.py` records `__main__.Net`).

    The script is imported under another name than "__main__", so its
    `if __name__ == "__main__":` block does not run; its folder goes on the import path for its
    own imports. A script with work outside that block (a call, loop or `with` at the top level)
    is refused before anything of it runs: importing it would start the training.

    Args:
        script: the `.py` file that saved the checkpoint.

    Returns:
        The imported module (also in `sys.modules` under `MAIN_MODULE_NAME`).

    Raises:
        UsageError: the script is missing, is not Python, or has unguarded top-level code.
        CheckpointError: importing it failed.
    """
    import importlib.util

    path = Path(script)
    if not path.is_file():
        raise UsageError(f"{opt('main_module', path)} is not a file; name the training script "
                         "that saved the checkpoint")
    try:
        source = path.read_text(encoding="utf-8")
        work = unguarded_code(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise UsageError(f"{opt('main_module', path)} is not a readable Python script: "
                         f"{exc}") from exc
    if work:
        line, text = work[0]
        more = f" (and {len(work) - 1} more statements)" if len(work) > 1 else ""
        raise UsageError(
            f"{opt('main_module', path)} runs code when imported, at line {line}: {text[:80]!r}"
            f"{more}; it was not imported. Put the script's work under "
            "`if __name__ == \"__main__\":`, or move the model's classes into a module of their "
            f"own and name it with {opt('imports', 'MODULE')}"
        )
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(MAIN_MODULE_NAME, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MAIN_MODULE_NAME] = module  # dataclasses and pickling look it up there
    try:
        with _stdout_to_stderr():
            spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's script
        sys.modules.pop(MAIN_MODULE_NAME, None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"importing {opt('main_module', path)} failed "
                              f"({type(exc).__name__}: {first})") from exc
    return module


def _main_module_cached(script: Path) -> ModuleType:
    """`load_main_module`, once per script in a process (several checkpoints share it)."""
    module = sys.modules.get(MAIN_MODULE_NAME)
    if module is not None and Path(module.__file__ or "").resolve() == script.resolve():
        return module
    return load_main_module(script)


def _main_mapping_pickle(main: ModuleType) -> ModuleType:
    """A pickle module for `torch.load` whose unpickler takes `__main__` classes from `main`."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "__main__":
                try:
                    return getattr(main, name)
                except AttributeError:
                    raise AttributeError(
                        f"Can't get attribute '{name}' on <module '{main.__file__}'>") from None
            return super().find_class(module, name)

    mapped = ModuleType("pickle")  # torch.load checks the name (only "dill" is special)
    mapped.Unpickler = Unpickler  # type: ignore[attr-defined]
    mapped.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    mapped.Pickler, mapped.dump = pickle.Pickler, pickle.dump  # type: ignore[attr-defined]
    return mapped


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compiled_archive_kind(path: Path) -> str | None:
    """"TorchScript" or "torch.export" when `path` is such an archive, else None."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("/archive_format") or "/serialized_exported_program" in n
           or n.endswith("/models/model.json") for n in names):
        return "torch.export"
    if any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in names):
        return "TorchScript"
    return None


def _compiled_refusal(path: Path, kind: str) -> CheckpointError:
    if kind == "torch.export":
        what = ("a torch.export archive (ExportedProgram): its graph is a flat list of aten "
                "operators without the model's modules, so no hook can watch an attention block")
    else:
        what = ("a TorchScript archive: its modules are compiled, and forward hooks cannot see "
                "the masks computed inside them")
    return CheckpointError(
        f"{path} is {what}; pass the eager model's checkpoint instead: torch.save(model) (with "
        f"{opt('trust', True)}), or a state dict with {opt('model', 'pkg.module:factory')}"
    )


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - listing is best effort (legacy format files)
        return []


def _refusal(path: Path, exc: Exception) -> CheckpointError:
    # the file's own classes first: torch's are rarely the news
    named = _unsafe_globals(path) or sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
    classes = sorted(named, key=lambda c: (c.startswith("torch."), c))
    if classes:
        shown = ", ".join(classes[:12]) + (
            f" and {len(classes) - 12} more" if len(classes) > 12 else "")
        what = f"it pickles classes ({shown})"
        if any(c.startswith("ultralytics.") for c in classes):
            what += " - an Ultralytics checkpoint, which also needs the ultralytics package"
        if any(c.startswith("__main__.") for c in classes):
            what += (" - classes of the script that saved it (__main__): add "
                     f"{opt('main_module', 'train.py')} to take them from that script")
    else:
        what = f"safe loading refused it ({one_line(_torch_detail(exc), 200)})"
    return CheckpointError(
        f"{show_path(path)} was not loaded: {what}; pass {opt('trust', True)} to load it with full pickle, "
        "which runs "
        "code from the file (only for files you trust)"
    )


def _missing_package_error(path: Path, name: str) -> CheckpointError:
    top = name.split(".")[0]
    if top in INSTALL_HINTS:
        return CheckpointError(
            f"{path} pickles classes from the {top!r} package, which is not installed: "
            f"{INSTALL_HINTS[top]}"
        )
    return CheckpointError(
        f"{path} needs module {name!r}, which is not importable: install it, or make it "
        f"importable with {opt('paths', 'DIR')} and {opt('imports', 'MODULE')}"
    )


def _import_pickled_packages(path: Path) -> None:
    """Import the top-level packages of the classes the file pickles, before unpickling it.

    A missing package then gets its install command, and one that fails to import (a broken
    install, e.g. torchvision built for another torch) an error saying so, rather than a
    misleading "corrupt file".
    """
    tops = sorted({g.split(".")[0] for g in _unsafe_globals(path)}
                  - {"torch", "builtins", "collections", "__main__", "__builtin__", "_codecs",
                     "copyreg", "numpy", "argparse", "pathlib", "datetime"})
    for top in tops:
        if top in sys.modules:
            continue
        try:
            with _stdout_to_stderr():
                importlib.import_module(top)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == top:
                raise _missing_package_error(path, top) from exc
            raise CheckpointError(
                f"importing {top!r}, whose classes {path} pickles, failed: {exc}"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - any import failure of a third-party package
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"importing {top!r}, whose classes {path} pickles, failed "
                f"({type(exc).__name__}: {first}); check that installation"
            ) from exc


def _main_classes_error(path: Path, name: str) -> CheckpointError:
    return CheckpointError(
        f"{path} pickles class {name!r} from the __main__ module of the script that saved it "
        f"(torch.save(model) in a training script): name that script with "
        f"{opt('main_module', 'train.py')}, which imports it without running its "
        "`if __name__ == \"__main__\":` block, or move the classes into a module and import it "
        f"with {opt('imports', 'MODULE')}"
    )


def _check_main_classes(path: Path) -> None:
    """Refuse a file whose `__main__` classes this process's `__main__` does not define (they
    are the training script's); a notebook or script that defines them loads as usual."""
    main = sys.modules.get("__main__")
    for qualified in _unsafe_globals(path):
        module, _, name = qualified.rpartition(".")
        if module == "__main__" and not hasattr(main, name):
            raise _main_classes_error(path, name)


def _missing_class_error(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc)
    mod = re.search(r"No module named '([^']+)'", text)
    if mod:
        return _missing_package_error(path, mod.group(1))
    attr = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", text)
    if attr:
        return CheckpointError(
            f"{path} needs class {attr.group(1)!r} from module {attr.group(2)!r}, which does not "
            f"define it: import the module that does with {opt('imports', 'MODULE')} "
            f"(and {opt('paths', 'DIR')})"
        )
    return CheckpointError(f"{path} could not be unpickled ({text}): check {opt('imports')} / {opt('paths')}")


def read_checkpoint(path: PathArg, trust: bool = False, main_module: ModuleType | None = None) -> Any:
    """`torch.load` the file on the CPU, safely unless `trust`.

    Args:
        path: the checkpoint file.
        trust: load with full pickle (runs code from the file).
        main_module: where the classes the file pickled under `__main__` are taken from (a
            training script imported by `load_main_module`); only with `trust`.

    Raises:
        CheckpointError: missing, unreadable, corrupt or truncated file; a TorchScript or
            torch.export archive; a refused pickle; a missing module or class.
    """
    path = Path(path)
    check_input_file(path, "checkpoint")
    if path.suffix.lower() == SAFETENSORS_SUFFIX or _looks_like_safetensors(path):
        return read_safetensors(path)
    kind = compiled_archive_kind(path)
    if kind is not None:
        raise _compiled_refusal(path, kind)
    if trust:
        offline_third_party_env()
        _import_pickled_packages(path)
        if main_module is None:
            _check_main_classes(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols and FutureWarnings on every legacy file
            warnings.simplefilter("ignore")
            with _stdout_to_stderr():
                if trust and main_module is not None:
                    return torch.load(str(path), map_location="cpu", weights_only=False,
                                      pickle_module=_main_mapping_pickle(main_module))
                return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust and _names_a_global(exc):
            raise _refusal(path, exc) from exc
        raise _corrupt(path, exc) from exc
    except (ModuleNotFoundError, AttributeError) as exc:
        raise _missing_class_error(path, exc) from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            UnicodeDecodeError, IndexError, KeyError) as exc:
        raise _corrupt(path, exc) from exc


def read_safetensors(path: Path) -> dict[str, Any]:
    """The tensors of a `.safetensors` file (no pickle), with its metadata under `__metadata__`.

    Raises:
        CheckpointError: the `safetensors` package is missing, or the file is not readable.
    """
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise CheckpointError(
            f"{path} is a safetensors file, which needs the safetensors package: pip install "
            "safetensors (or pip install 'coordatt-diag[safetensors]')"
        ) from exc
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
            metadata = f.metadata()
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise _corrupt(path, exc) from exc
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return {"state_dict": tensors, "__metadata__": dict(metadata or {}),
            "__format__": "safetensors"}


def _looks_like_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length, then the JSON header (torch.save files are zip or
    # pickle: they start with "PK" or 0x80)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8


def check_input_file(path: Path, what: str) -> None:
    """Refuse an input path that is missing, not a regular file (a folder, a FIFO that would
    block, a device), a symlink loop or a name too long, before anything opens it.

    Raises:
        CheckpointError: for `what` == "checkpoint".
        InputError: for any other input (`--tensors`, `--labels`, a report JSON).
    """
    import stat

    err = CheckpointError if what == "checkpoint" else InputError
    name = show_path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise err(f"{what} {name} does not exist") from None
    except OSError as exc:
        raise err(f"{what} {name} cannot be read: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:  # a NUL byte in the name
        raise err(f"{what} {name} is not a valid file name ({exc})") from None
    if stat.S_ISDIR(mode):
        raise err(f"{what} {name} is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise err(f"{what} {name} is not a regular file (a FIFO, socket or device); save it to "
                  "a file first")
    if not os.access(path, os.R_OK):
        raise err(f"{what} {name} cannot be read: permission denied")


def _names_a_global(exc: Exception) -> bool:
    """Whether torch's safe loader refused the file for a class or function it references (a
    genuine pickle of objects) rather than for bytes it cannot parse (a corrupt file)."""
    text = str(exc)
    return "Unsupported global" in text or "unsupported GLOBAL" in text


def _torch_detail(exc: BaseException) -> str:
    """The part of torch's message that says what was wrong (its first sentence), without its
    advice to re-run `torch.load` unsafely."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    found = None
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error:" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[1].strip()
            found = rest or (lines[i + 1] if i + 1 < len(lines) else None)
            break
        if ln.startswith(("Unsupported operand", "Trying to load unsupported")):
            found = ln
            break
    if found is None:
        kept = [ln for ln in lines if "weights_only" not in ln and "Weights only load" not in ln
                and "Please file an issue" not in ln]
        found = kept[0] if kept else ""
    if ". " in found:
        found = found.split(". ", 1)[0] + "."
    if isinstance(exc, (KeyError, IndexError, EOFError, ValueError)) or not found:
        found = f"{type(exc).__name__}: {found}" if found else type(exc).__name__
    return found


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{show_path(path)} is not a readable PyTorch checkpoint (corrupt, truncated or not a "
        f"checkpoint): {one_line(_torch_detail(exc), 200)}"
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
        raise UsageError(f"{opt('model', spec)} must look like pkg.module:factory")
    mod_name, _, attr = spec.partition(":")
    kwargs: dict[str, Any] = {}
    if args_json:
        try:
            kwargs = json.loads(args_json)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{opt('model_args')} is not valid JSON: {exc}") from exc
        if not isinstance(kwargs, dict):
            raise UsageError(f"{opt('model_args')} must be a JSON object of keyword arguments")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise CheckpointError(
            f"cannot import {mod_name!r} for {opt('model')} ({one_line(str(exc), 200)}): add its "
            f"folder with {opt('paths', 'DIR')}"
        ) from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module fails to import
        raise CheckpointError(
            f"importing {mod_name!r} for {opt('model')} raised {type(exc).__name__}: "
            f"{one_line(str(exc), 200)}"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise CheckpointError(f"module {mod_name!r} has no callable {attr!r} for {opt('model')}")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UsageError(f"{opt('model', spec)} could not be called with {kwargs}: "
                         f"{one_line(str(exc), 200)}") from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of the user's factory
        what = f"sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else one_line(str(exc), 200)
        raise CheckpointError(
            f"{opt('model', spec)} raised {type(exc).__name__} while building the model: {what}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{opt('model', spec)} returned a {type(model).__name__}, not an nn.Module")
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
            f"the state dict does not fit the {opt('model')} factory: " + "; ".join(parts)
        ) from exc


def load_model(
    path: PathArg,
    trust: bool = False,
    factory: str | None = None,
    factory_args: str | None = None,
    main_module: PathArg | None = None,
) -> LoadedModel:
    """Load the model in `path`, in float32, in eval mode.

    Args:
        path: the checkpoint file.
        trust: load with full pickle (runs code from the file).
        factory: `pkg.mod:factory` that builds the model for a state dict.
        factory_args: JSON object of keyword arguments for the factory.
        main_module: the training script whose classes the file pickled under `__main__`
            (imported without running its `if __name__ == "__main__":` block; needs `trust`).

    Returns:
        The model and the checkpoint's facts (format, sha256, epoch).

    Raises:
        CheckpointError, UsageError: see `read_checkpoint`, `build_from_factory`, `load_state`.
    """
    path = Path(path)
    main = None
    if main_module is not None:
        if not trust:
            raise UsageError(f"{opt('main_module')} takes the classes of a pickled model from "
                             f"a script, which needs {opt('trust', True)} (full pickle)")
        main = _main_module_cached(Path(main_module))
    obj = read_checkpoint(path, trust=trust, main_module=main)
    fmt, found = _pick(obj)
    if fmt == "state_dict":
        if factory is None:
            raise CheckpointError(
                f"{path} holds a state dict ({len(found)} tensors) but no model: pass "
                f"{opt('model', 'pkg.module:factory')} to build the model it belongs to"
            )
        model = build_from_factory(factory, factory_args)
        load_state(model, found)
    else:
        model = found
        if factory is not None:
            raise UsageError(f"{path} holds a whole model; {opt('model')} is only for state dicts")
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
        for key in _CHECKPOINT_FACTS:
            if obj.get(key) is not None:
                extra[key] = _plain(obj[key])
        if obj.get("__metadata__"):
            extra["metadata"] = _plain(obj["__metadata__"])
        fmt, key_facts = _container_format(obj, fmt)
        extra.update(key_facts)
    stride = yolo_stride(model)
    if stride is not None:
        extra["stride"] = stride
    info = CheckpointInfo(path=str(path), sha256=sha256_of(path), format=fmt, epoch=epoch,
                          extra=extra)
    return LoadedModel(model=model, info=info)


def _container_format(obj: Mapping[str, Any], fmt: str) -> tuple[str, dict[str, Any]]:
    """The trainer that wrote the dict, when it is recognisable, and which entry held the model."""
    if obj.get("__format__") == "safetensors":
        return "safetensors", {}
    if "pytorch-lightning_version" in obj:
        return "lightning", {}
    if "train_args" in obj and fmt.startswith("dict:"):
        # last/best.pt hold `model` (ema None, epoch -1); epochN.pt hold `ema` (model None)
        return "ultralytics", {"model_key": fmt.partition(":")[2]}
    return fmt, {}


def is_yolo_model(model: nn.Module) -> bool:
    """An Ultralytics (or YOLOv5-style) model: an `ultralytics` class, or a `yaml` dict and a
    `stride`."""
    if any(c.__module__.split(".")[0] == "ultralytics" for c in type(model).__mro__):
        return True
    return isinstance(getattr(model, "yaml", None), dict) and hasattr(model, "stride")


def yolo_stride(model: nn.Module) -> int | None:
    """The largest output stride of a YOLO model (`model.stride.max()`); None for other models."""
    if not is_yolo_model(model):
        return None
    raw = getattr(model, "stride", None)
    if isinstance(raw, torch.Tensor) and raw.numel() > 0:
        value = float(raw.max())
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, (list, tuple)) and raw and all(isinstance(v, (int, float)) for v in raw):
        value = float(max(raw))
    else:
        return None
    return int(value) if value >= 1 and value == int(value) else None


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy: containers kept, other values (paths, enums, tensors) as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if depth < 4 and isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."
