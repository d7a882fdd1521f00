"""The Python API as a first-class interface: the public names import from `coordatt_diag`, every
file argument takes a `str` or a `Path`, and errors name Python arguments (the CLI names flags)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import coordatt_diag
from coordatt_diag.errors import DiagError, InputError, UsageError, opt, render_options

ROOT = Path(__file__).resolve().parent.parent
DEMO = dict(model="coordatt_diag.demo:digits_net", tensors="examples/digits_samples.pt",
            batches=1, batch_size=16)


def test_public_names() -> None:
    from coordatt_diag import DiagError as Exported
    from coordatt_diag import InspectOptions, Report, analyze_model, inspect_checkpoint

    assert set(coordatt_diag.__all__) >= {"InspectOptions", "inspect_checkpoint",
                                          "analyze_model", "Report", "DiagError"}
    assert callable(inspect_checkpoint) and callable(analyze_model)
    assert InspectOptions.__module__ == "coordatt_diag.runs.inspect"
    assert Report.__module__ == "coordatt_diag.results"
    assert Exported is DiagError and issubclass(UsageError, Exported)


def test_inspect_options_take_str_and_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from coordatt_diag import InspectOptions

    opts = InspectOptions(tensors="a.pt", images=Path("imgs"), config="c.toml", labels="l.pt",
                          main_module="train.py", paths="src", imports="pkg.blocks")
    assert opts.tensors == Path("a.pt") and opts.images == Path("imgs")
    assert opts.config == Path("c.toml") and opts.labels == Path("l.pt")
    assert opts.main_module == Path("train.py")
    assert opts.paths == (Path("src"),) and opts.imports == ("pkg.blocks",)
    assert InspectOptions(paths=["a", Path("b")]).paths == (Path("a"), Path("b"))


def test_str_paths_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from coordatt_diag import InspectOptions, inspect_checkpoint
    from coordatt_diag.reports.report_command import make_report, read_saved_report
    from coordatt_diag.runs.check import check_checkpoints
    from coordatt_diag.runs.compare import compare_sources
    from coordatt_diag.runs.trend import trend_checkpoints

    monkeypatch.chdir(ROOT)
    opts = InspectOptions(**DEMO)  # type: ignore[arg-type]
    report = inspect_checkpoint("examples/digits_collapsed.pt", opts)
    assert report.summary.status == "warn"
    result = check_checkpoints(["examples/digits_collapsed.pt"], opts, fail_on="warn")
    assert not result.healthy
    trend = trend_checkpoints(["examples/digits_healthy.pt", "examples/digits_collapsed.pt"], opts)
    assert len(trend.points) == 2
    folder = make_report(str(tmp_path / "rep"), "examples/digits_collapsed.pt", opts, overlays=0)
    assert folder is not None
    saved = str(tmp_path / "rep" / "report.json")
    assert read_saved_report(saved).summary.status == "warn"
    comparison = compare_sources(saved, "examples/digits_healthy.pt", opts)
    assert [b.name for b in comparison.blocks] == ["stage1.att", "stage2.att", "stage3.att"]


def test_errors_name_python_arguments() -> None:
    from coordatt_diag import InspectOptions, inspect_checkpoint

    with pytest.raises(UsageError) as err:
        inspect_checkpoint(str(ROOT / "examples/digits_collapsed.pt"),
                           InspectOptions(model=DEMO["model"], batch_size=0))  # type: ignore[arg-type]
    assert str(err.value) == "batch_size must be at least 1"
    assert err.value.cli_message() == "--batch-size must be at least 1"


def test_shape_error_names_the_argument(tmp_path: Path) -> None:
    import torch

    from coordatt_diag import InspectOptions, inspect_checkpoint

    # a model whose linear head fits 16x16 inputs only: 20x20 inputs fail in its forward pass
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Sigmoid())
    gate = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 2))
    model = torch.nn.Sequential(net, gate)
    path = tmp_path / "m.pt"
    torch.save(model, path)
    with pytest.raises(InputError) as err:
        inspect_checkpoint(str(path), InspectOptions(trust=True, imgsz=20, batches=1))
    assert "check imgsz," in str(err.value) and "--imgsz" not in str(err.value)
    assert "check --imgsz," in err.value.cli_message()


@pytest.mark.parametrize(("value", "python", "cli"), [
    (None, "blocks", "--blocks"),
    ("a(b", "blocks='a(b'", "--blocks 'a(b'"),
    (Path("x y.pt"), "blocks='x y.pt'", "--blocks 'x y.pt'"),
    (4, "blocks=4", "--blocks 4"),
    (True, "blocks=True", "--blocks"),
])
def test_opt_rendering(value: object, python: str, cli: str) -> None:
    text = f"see {opt('blocks', value)} here"
    assert render_options(text, cli=False) == f"see {python} here"
    assert render_options(text, cli=True) == f"see {cli} here"
    assert render_options(opt("paths", "DIR"), cli=True) == "--path DIR"
    assert render_options(opt("imports"), cli=True) == "--import"


def _raised_texts(tree: ast.AST) -> list[tuple[int, str]]:
    """The literal text of every `raise SomethingError(...)` message in a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                for sub in ast.walk(arg):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        out.append((node.lineno, sub.value))
    return out


def test_library_errors_do_not_spell_flags() -> None:
    """Library messages name settings through `errors.opt`; only the CLI spells `--flags`
    (and a message may quote a whole command line to run, `coordatt-diag inspect --json`)."""
    offenders = []
    for path in sorted((ROOT / "coordatt_diag").rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for line, text in _raised_texts(ast.parse(path.read_text())):
            if re.search(r"(^|[\s(`])--[a-z]", re.sub(r"`coordatt-diag [^`]*`", "", text)):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)


def test_rank_errors_keep_the_marks() -> None:
    from coordatt_diag.runs.distributed import error_payload, raise_first_error

    payload = error_payload(UsageError(f"{opt('batch_size')} must be at least 1"))
    with pytest.raises(DiagError) as err:
        raise_first_error([None, payload])
    assert err.value.cli_message() == "rank 1: --batch-size must be at least 1"
    assert str(err.value) == "rank 1: batch_size must be at least 1"
