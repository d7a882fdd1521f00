"""The hostile corpus: bad checkpoints, inputs, configs, report JSONs, output paths, failing model
code and signals, each run on every command it applies to.

`build_world(root)` writes the files once (a good state dict and report, then every bad file);
`cases()` lists the cases, each an argument list with `{w}` for the world folder and the exit code
the README promises. `test_fuzz.py` runs them in-process and asserts, for each, the exit code, one
`error:` line, no traceback, no file left behind and no code executed.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.fuzz import models

MARKER = "PWNED"  # a folder the malicious pickles would create
FACTORY = "tests.fuzz.models:tiny"
RUN = ["--imgsz", "8", "--batch-size", "2", "--batches", "1"]
COMMANDS = ("inspect", "check", "trend", "compare", "report")


class Evil:
    """Unpickling runs os.mkdir(MARKER): proof that code ran."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.where / MARKER),))


@dataclass(frozen=True)
class Case:
    """One hostile run: `args` (with `{w}` for the world folder) must exit with `code`."""

    cls: str
    name: str
    args: tuple[str, ...]
    code: int
    needle: str | None = None  # a word the error line must contain
    env: dict[str, str] = field(default_factory=dict)
    root_skips: bool = False  # root ignores folder permissions
    leaves: tuple[str, ...] = ()  # what a successful case writes (removed after it)

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.name}-{self.args[0]}"


def _mkfifo(path: Path) -> None:
    if not path.exists():
        os.mkfifo(path)


def build_world(w: Path) -> None:
    """Write every file the cases name into `w`."""
    w.mkdir(parents=True, exist_ok=True)
    (w / "tmp").mkdir(exist_ok=True)
    net = models.tiny()
    torch.save(net.state_dict(), w / "sd.pt")
    torch.save(net, w / "whole.pt")
    # -- bad checkpoints
    ck = w / "ck"
    ck.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    (ck / "random.pt").write_bytes(rng.bytes(4096))
    (ck / "text.pt").write_text("not a checkpoint\n" * 20)
    (ck / "empty.pt").write_bytes(b"")
    data = (w / "whole.pt").read_bytes()
    (ck / "truncated.pt").write_bytes(data[: len(data) // 2])
    (ck / "zeroed.pt").write_bytes(b"\0" * len(data))
    with open(ck / "evil_plain.pt", "wb") as fh:
        pickle.dump(Evil(w), fh)
    torch.save({"model": Evil(w)}, ck / "evil_zip.pt")
    torch.save({"model": Evil(w)}, ck / "evil_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"x": torch.zeros(2), "y": "text"}, ck / "dict_no_model.pt")
    torch.save({"stem.weight": torch.zeros(1)}, ck / "wrong_shapes.pt")
    torch.save([1, 2, 3], ck / "list.pt")
    with zipfile.ZipFile(ck / "zip_not_torch.pt", "w") as zf:
        zf.writestr("hello.txt", "hi")
    (ck / "header_only.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{\"a\": 1}       ")
    (ck / "folder.pt").mkdir(exist_ok=True)
    _mkfifo(ck / "fifo.pt")
    loop = ck / "loop.pt"
    if not loop.is_symlink():
        loop.symlink_to(loop.name)
    newline = ck / "new\nline.pt"
    newline.write_bytes(rng.bytes(64))
    # -- bad inputs
    inp = w / "in"
    inp.mkdir(exist_ok=True)
    with open(inp / "evil.pt", "wb") as fh:
        pickle.dump(Evil(w), fh)
    torch.save(Evil(w), inp / "evil_zip.pt")
    np.save(inp / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    torch.save(torch.zeros(2, 3, 8, 8).to_sparse(), inp / "sparse.pt")
    torch.save(torch.empty(2, 3, 8, 8, device="meta"), inp / "meta.pt")
    torch.save(torch.zeros(2, 3, 8, 8, dtype=torch.complex64), inp / "complex.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, not gone
        torch.save(torch.quantize_per_tensor(torch.zeros(2, 3, 8, 8), 0.1, 0, torch.qint8),
                   inp / "quantized.pt")
    torch.save(torch.zeros(2, 5, 8, 8), inp / "channels.pt")
    torch.save(torch.zeros(8, 8), inp / "flat.pt")
    torch.save(torch.zeros(0, 3, 8, 8), inp / "none.pt")
    torch.save({"a": torch.zeros(1)}, inp / "dict.pt")
    (inp / "random.pt").write_bytes(rng.bytes(512))
    _mkfifo(inp / "fifo.pt")
    (inp / "noimages").mkdir(exist_ok=True)
    bad = inp / "badimages"
    bad.mkdir(exist_ok=True)
    (bad / "a.png").write_bytes(rng.bytes(100))
    (bad / "b.jpg").write_text("jpeg?")
    torch.save(torch.tensor([0.5, 1.5]), inp / "float_labels.pt")
    with open(inp / "evil_labels.pt", "wb") as fh:
        pickle.dump(Evil(w), fh)
    # -- bad configs
    cfg = w / "cfg"
    cfg.mkdir(exist_ok=True)
    for name, text in CONFIGS.items():
        (cfg / f"{name}.toml").write_text(text)
    (cfg / "latin1.toml").write_bytes("near_constant_warn = 0.02 # caf\xe9\n".encode("latin-1"))
    (cfg / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    (cfg / "deep_table.toml").write_text("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n")
    _mkfifo(cfg / "fifo.toml")
    # -- report JSONs
    good = good_report(w)
    rep = w / "rep"
    rep.mkdir(exist_ok=True)
    (w / "good.json").write_text(json.dumps(good))
    for name, doc in bad_reports(good).items():
        (rep / f"{name}.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    (rep / "latin1.json").write_bytes(b'{"schema": "caf\xe9"}')
    (rep / "deep.json").write_text("[" * 100000 + "]" * 100000)
    (rep / "nan.json").write_text(json.dumps(good).replace('"batch_size": 2', '"batch_size": NaN'))
    _mkfifo(rep / "fifo.json")
    (rep / "folder.json").mkdir(exist_ok=True)
    # -- outputs
    (w / "afile").write_text("a regular file\n")
    _mkfifo(w / "out.fifo")
    ro = w / "readonly"
    ro.mkdir(exist_ok=True)
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)


def good_report(w: Path) -> dict[str, Any]:
    """A real report of the tiny model (as inspect --json writes it)."""
    from coordatt_diag.reports.json_report import report_json
    from coordatt_diag.runs.inspect import InspectOptions, inspect_checkpoint

    report = inspect_checkpoint(w / "sd.pt", InspectOptions(model=FACTORY, imgsz=8, batch_size=2,
                                                            batches=1))
    data: dict[str, Any] = json.loads(report_json(report))
    return data


CONFIGS = {
    "not_toml": "x = [\n",
    "tool_string": 'tool = "coordatt-diag"\n',
    "section_string": '[tool]\n"coordatt-diag" = 3\n',
    "blocks_string": '[tool.coordatt-diag]\nblocks = "model.9"\n',
    "block_table_number": '[tool.coordatt-diag.blocks]\n"att" = 0.5\n',
    "block_bad_regex": '[tool.coordatt-diag.blocks."("]\nsuppression_warn = 0.1\n',
    "unknown_key": "nope = 1\n",
    "string_value": 'near_constant_warn = "low"\n',
    "bool_value": "near_constant_warn = true\n",
    "array_value": "near_constant_warn = [0.1]\n",
    "table_value": "[near_constant_warn]\nx = 1\n",
    "negative": "near_constant_warn = -0.1\n",
    "nan": "near_constant_warn = nan\n",
    "inf": "std_ratio_floor = inf\n",
    "share_above_one": "pass_through_share = 1.5\n",
    "inverted": "near_constant_warn = 0.01\nnear_constant_fail = 0.05\n",
    "inverted_means": "near_constant_mean_low = 0.9\nnear_constant_mean_high = 0.1\n",
    "block_inverted": '[tool.coordatt-diag.blocks."att"]\nsuppression_fail = 0.01\n',
    "block_negative": '[tool.coordatt-diag.blocks."att"]\nalpha_off = -1\n',
    "top_level_array": "[[tool]]\nx = 1\n",
}


def bad_reports(good: dict[str, Any]) -> dict[str, Any]:
    """Report JSONs that are wrong in one way each (valid JSON unless the name says otherwise)."""
    def mutate(path: list[Any], value: Any) -> dict[str, Any]:
        doc = json.loads(json.dumps(good))
        target = doc
        for p in path[:-1]:
            target = target[p]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return doc

    mask = next(iter(good["blocks"][0]["masks"]))
    out: dict[str, Any] = {
        "not_json": "{not json",
        "empty": "",
        "array": [],
        "string": '"report"',
        "null": "null",
        "other_schema": mutate(["schema"], "something/else@1"),
        "blocks_object": mutate(["blocks"], {}),
        "blocks_string": mutate(["blocks"], "many"),
        "block_number": mutate(["blocks", 0], 3),
        "block_name_number": mutate(["blocks", 0, "name"], 5),
        "masks_list": mutate(["blocks", 0, "masks"], []),
        "mask_std_string": mutate(["blocks", 0, "masks", mask, "std"], "0.1"),
        "mask_share_above_one": mutate(["blocks", 0, "masks", mask, "sat_low"], 2.0),
        "mask_hist_short": mutate(["blocks", 0, "masks", mask, "hist"], [1, 2]),
        "mask_bad_name": mutate(["blocks", 0, "masks", "a_x"], good["blocks"][0]["masks"][mask]),
        "status_unknown": mutate(["blocks", 0, "status"], "great"),
        "summary_missing": mutate(["summary"], _DELETE),
        "summary_string": mutate(["summary"], "ok"),
        "inputs_samples_negative": mutate(["inputs", "samples"], -1),
        "inputs_shape_string": mutate(["inputs", "shape"], "3x8x8"),
        "finding_severity": mutate(["findings"], [{"code": "x", "severity": "boom", "block": "",
                                                   "mask": None, "value": None, "threshold": None,
                                                   "message": "", "remedy": ""}]),
        "extra_field": mutate(["surprise"], 1),
        "checkpoint_sha": mutate(["checkpoint", "sha256"], "xyz"),
        "tool_list": mutate(["tool"], []),
        "check_many": {"schema": "coordatt-diag/check@1", "checkpoints": [{}, {}]},
        "check_bad": {"schema": "coordatt-diag/check@1", "checkpoints": [3]},
        "check_not_list": {"schema": "coordatt-diag/check@1", "checkpoints": "x"},
        "zero_blocks": mutate(["blocks"], []),
    }
    out["zero_blocks"]["summary"] = {"blocks": 0, "ok": 0, "warn": 0, "fail": 0, "status": "ok"}
    return out


_DELETE = object()


def _with_checkpoint(command: str, ck: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`command` run on checkpoint `ck` (compare: against the good one; report: into a folder)."""
    head: tuple[str, ...]
    if command == "compare":
        head = ("compare", ck, "{w}/sd.pt")
    elif command == "report":
        head = ("report", ck, "--out", "{w}/report_out", "--overlays", "0")
    else:
        head = (command, ck)
    return (*head, "--model", FACTORY, *RUN, *extra)


BAD_CHECKPOINTS = {
    "random": "ck/random.pt", "text": "ck/text.pt", "empty": "ck/empty.pt",
    "truncated": "ck/truncated.pt", "zeroed": "ck/zeroed.pt", "evil_plain": "ck/evil_plain.pt",
    "evil_zip": "ck/evil_zip.pt", "evil_legacy": "ck/evil_legacy.pt",
    "dict_no_model": "ck/dict_no_model.pt", "wrong_shapes": "ck/wrong_shapes.pt",
    "list": "ck/list.pt", "zip_not_torch": "ck/zip_not_torch.pt",
    "bad_safetensors": "ck/header_only.safetensors", "folder": "ck/folder.pt",
    "fifo": "ck/fifo.pt", "symlink_loop": "ck/loop.pt", "missing": "ck/missing.pt",
    "too_long": "ck/" + "x" * 300 + ".pt", "under_a_file": "afile/x.pt",
    "newline_name": "ck/new\nline.pt", "device": "/dev/zero",
}

BAD_TENSORS = {
    "evil": "in/evil.pt", "evil_zip": "in/evil_zip.pt", "object_npy": "in/object.npy",
    "sparse": "in/sparse.pt", "meta": "in/meta.pt", "complex": "in/complex.pt",
    "quantized": "in/quantized.pt", "channels": "in/channels.pt", "flat": "in/flat.pt",
    "no_samples": "in/none.pt", "dict": "in/dict.pt", "random": "in/random.pt",
    "fifo": "in/fifo.pt", "folder": "in/noimages", "missing": "in/missing.pt",
}

BAD_MODELS = {
    "factory_value_error": "factory_value_error", "factory_key_error": "factory_key_error",
    "factory_runtime_error": "factory_runtime_error", "factory_system_exit": "factory_system_exit",
    "factory_not_module": "factory_returns_int", "forward_value_error": "forward_value_error",
    "forward_key_error": "forward_key_error", "forward_assertion": "forward_assertion",
    "forward_fourth_batch": "forward_fourth_batch",
    "forward_not_implemented": "forward_not_implemented", "no_such_factory": "nothing_here",
}

REPORT_USES = ("check", "compare", "report")


def _report_case(use: str, path: str) -> tuple[str, ...]:
    if use == "check":
        return ("check", "{w}/sd.pt", "--model", FACTORY, *RUN, "--baseline", path)
    if use == "compare":
        return ("compare", path, "{w}/good.json")
    return ("report", "--from-json", path, "--out", "{w}/report_out")


def cases() -> list[Case]:
    """Every case, by class."""
    out: list[Case] = []
    # 1. checkpoints: exit 3 on every command, nothing unpickled
    for name, path in BAD_CHECKPOINTS.items():
        full = path if path.startswith("/") else "{w}/" + path
        out += [Case("checkpoint", name, _with_checkpoint(c, full), 3) for c in COMMANDS]
    # 2. inputs: --tensors, --images, --labels, synthetic batches too big
    for name, path in BAD_TENSORS.items():
        out += [Case("input", f"tensors_{name}",
                     _with_checkpoint(c, "{w}/sd.pt", ("--tensors", "{w}/" + path)), 3)
                for c in COMMANDS]
    for name, path in {"no_images": "in/noimages", "bad_images": "in/badimages",
                       "missing_images": "in/nothing"}.items():
        out += [Case("input", name, _with_checkpoint(c, "{w}/sd.pt", ("--images", "{w}/" + path)),
                     3) for c in COMMANDS]
    for name, path in {"evil_labels": "in/evil_labels.pt", "float_labels": "in/float_labels.pt",
                       "labels_fifo": "in/fifo.pt"}.items():
        out += [Case("input", name, _with_checkpoint(c, "{w}/sd.pt",
                                                     ("--effect", "--labels", "{w}/" + path)), 3)
                for c in ("inspect", "report")]
    for name, size in {"batch_too_big": "100000000000", "batch_int64": "9223372036854775807",
                       "batch_beyond_int64": "99999999999999999999999"}.items():
        out += [Case("input", name, _with_checkpoint(c, "{w}/sd.pt", ("--batch-size", size)), 3)
                for c in COMMANDS]
    # 3. model code that fails: factory or forward raising anything -> 3 (2 for a bad spec)
    for name, fn in BAD_MODELS.items():
        for c in COMMANDS:
            args = list(_with_checkpoint(c, "{w}/sd.pt"))
            args[args.index(FACTORY)] = f"tests.fuzz.models:{fn}"
            if name == "forward_fourth_batch":  # discovery, the memory probe, 3 good batches
                args[args.index("--batches") + 1] = "6"
            out.append(Case("model", name, tuple(args), 3))
    # NaN masks are a finding, not a crash: inspect, trend, compare and report succeed, check fails
    for c in COMMANDS:
        args = list(_with_checkpoint(c, "{w}/sd.pt"))
        args[args.index(FACTORY)] = "tests.fuzz.models:nan_masks"
        out.append(Case("model", "nan_masks", tuple(args), 1 if c == "check" else 0,
                        leaves=("report_out",) if c == "report" else ()))
    # 4. configs: exit 2 on every command
    names = [*CONFIGS, "latin1", "deep", "deep_table", "fifo"]
    for name in names:
        out += [Case("config", name,
                     _with_checkpoint(c, "{w}/sd.pt", ("--config", f"{{w}}/cfg/{name}.toml")), 2)
                for c in COMMANDS]
    out += [Case("config", "missing", _with_checkpoint(c, "{w}/sd.pt",
                                                       ("--config", "{w}/cfg/none.toml")), 2)
            for c in COMMANDS]
    # 5. report JSONs given to check --baseline, compare and report --from-json: exit 3
    stub = {"blocks": [{"masks": {"a_h": {}}}], "summary": {}, "inputs": {}, "checkpoint": {}}
    reports = [*bad_reports(stub), "latin1", "deep", "nan",
               "fifo", "folder", "missing"]
    for name in reports:
        for use in REPORT_USES:
            if name == "zero_blocks" and use != "check":
                continue  # a report of a model without blocks is fine to render or compare
            code = 2 if name == "zero_blocks" else 3
            out.append(Case("report", name, _report_case(use, f"{{w}}/rep/{name}.json"), code))
    # 6. output paths: refused before the run (2), written in place (0), or failing at commit (2)
    outputs = {
        "json_folder": ("--json", "{w}/ck", 2), "json_under_file": ("--json", "{w}/afile/x", 2),
        "json_empty": ("--json", "", 2), "json_is_checkpoint": ("--json", "{w}/sd.pt", 2),
        "json_trailing_slash": ("--json", "{w}/newdir/", 2),
        "json_dev_null": ("--json", "/dev/null", 0), "json_dev_full": ("--json", "/dev/full", 2),
        "json_fifo_no_reader": ("--json", "{w}/out.fifo", 2),
    }
    for name, (opt, path, code) in outputs.items():
        for c in ("inspect", "check", "trend", "compare"):
            out.append(Case("output", name, _with_checkpoint(c, "{w}/sd.pt", (opt, path)), code))
    out.append(Case("output", "json_readonly_folder",
                    _with_checkpoint("inspect", "{w}/sd.pt", ("--json", "{w}/readonly/x.json")),
                    2, root_skips=True))
    check_outputs = {
        "junit_unwritable_after_json": ("--json", "{w}/new.json", "--junit", "/dev/full"),
        "baseline_unwritable_after_json": ("--json", "{w}/new.json", "--write-baseline",
                                           "{w}/afile/b.json"),
        "junit_folder": ("--junit", "{w}/ck"), "junit_empty": ("--junit", ""),
        "json_and_junit_same": ("--json", "{w}/same.xml", "--junit", "{w}/same.xml"),
        "baseline_is_checkpoint": ("--write-baseline", "{w}/sd.pt"),
        "junit_fifo_after_json": ("--json", "{w}/new.json", "--junit", "{w}/out.fifo"),
    }
    for name, extra in check_outputs.items():
        out.append(Case("output", name, _with_checkpoint("check", "{w}/sd.pt", extra), 2))
    out.append(Case("output", "step_summary_folder",
                    _with_checkpoint("check", "{w}/sd.pt", ("--json", "{w}/new.json")), 2,
                    env={"GITHUB_STEP_SUMMARY": "{w}/ck"}))
    out.append(Case("output", "trend_out_is_file_after_json",
                    _with_checkpoint("trend", "{w}/sd.pt", ("--json", "{w}/new.json", "--out",
                                                            "{w}/afile")), 2))
    out.append(Case("output", "trend_out_under_file",
                    _with_checkpoint("trend", "{w}/sd.pt", ("--out", "{w}/afile/plots")), 2))
    out.append(Case("output", "trend_plots_dev_full_json",
                    _with_checkpoint("trend", "{w}/sd.pt", ("--out", "{w}/plots_new", "--json",
                                                            "/dev/full")), 2))
    for name, path in {"report_out_file": "{w}/afile", "report_out_empty": "",
                       "report_out_under_file": "{w}/afile/r", "report_out_cwd": "."}.items():
        args = tuple(path if a == "{w}/report_out" else a
                     for a in _with_checkpoint("report", "{w}/sd.pt"))
        out.append(Case("output", name, args, 2))
    # 7. signals raised inside the run (the model sends them to its own process)
    for sig, code in (("sigterm", 143), ("sigint", 130)):
        for c in COMMANDS:
            args = list(_with_checkpoint(c, "{w}/sd.pt", ("--json", "{w}/new.json")
                                         if c != "report" else ()))
            args[args.index(FACTORY)] = f"tests.fuzz.models:{sig}_in_forward"
            out.append(Case("signal", sig, tuple(args), code))
    # 8. nonsense values and usage errors (click's and ours): exit 2
    usage = {
        "no_such_option": ("--no-such-option",), "batch_not_int": ("--batch-size", "x"),
        "batch_zero": ("--batch-size", "0"), "batches_negative": ("--batches", "-1"),
        "imgsz_zero": ("--imgsz", "0"), "half_dtype_without_half": ("--half-dtype", "bfloat16"),
        "half_dtype_unknown": ("--half-dtype", "float8"), "bad_regex": ("--blocks", "("),
        "bad_device": ("--device", "tpu"), "bad_normalize": ("--normalize", "zscore"),
        "model_args_not_json": ("--model-args", "{x"), "synthetic_with_tensors":
            ("--synthetic", "--tensors", "{w}/in/flat.pt"),
    }
    for name, extra in usage.items():
        out += [Case("usage", name, _with_checkpoint(c, "{w}/sd.pt", extra), 2) for c in COMMANDS]
    for name, extra in {"max_drop_negative": ("--max-drop", "-0.1"),
                        "max_drop_nan": ("--max-drop", "nan"),
                        "max_ratio_drop_above_one": ("--max-ratio-drop", "2"),
                        "fail_on_unknown": ("--fail-on", "panic")}.items():
        out.append(Case("usage", name, _with_checkpoint("check", "{w}/sd.pt", extra), 2))
    out.append(Case("usage", "no_command", ("bogus",), 2))
    out += [Case("usage", "missing_argument", (c,), 2) for c in COMMANDS]
    return out
