"""The fuzz suite: every case of the hostile corpus (`tests/fuzz/corpus.py`) on every command it
applies to, in-process. For each: the promised exit code, exactly one `error:` line on stderr
(none on success), no traceback, no file left behind (the world folder and the temporary folder
are as they were), and no code run from a pickle."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordatt_diag.cli import app
from tests.fuzz.corpus import MARKER, Case, build_world, cases

CASES = cases()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    w = tmp_path_factory.mktemp("world")
    build_world(w)
    old = tempfile.tempdir
    tempfile.tempdir = str(w / "tmp")  # every temporary file lands where the snapshot sees it
    old_env = {k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "GITHUB_STEP_SUMMARY",
                                               "GITHUB_ACTIONS")}
    os.environ["YOLO_CONFIG_DIR"] = str(w / "yolo")
    os.environ.pop("GITHUB_STEP_SUMMARY", None)
    os.environ.pop("GITHUB_ACTIONS", None)
    cwd = Path.cwd()
    os.chdir(w)
    try:
        yield w
    finally:
        os.chdir(cwd)
        tempfile.tempdir = old
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.chmod(w / "readonly", 0o755)


def snapshot(w: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under `w` (not following symlinks): its type, size and modification time."""
    out = {}
    for folder, dirs, files in os.walk(w):
        for name in dirs + files:
            p = os.path.join(folder, name)
            st = os.lstat(p)
            out[os.path.relpath(p, w)] = (st.st_mode, st.st_size if not os.path.isdir(p) else 0,
                                          st.st_mtime_ns)
    return out


def run_case(case: Case, w: Path) -> tuple[int, str, str]:
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb",
                            **{k: v.replace("{w}", str(w)) for k, v in case.env.items()}})
    args = [a.replace("{w}", str(w)) for a in case.args]
    result = runner.invoke(app, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an exception through the boundary is a failure of the suite
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, world: Path) -> None:
    if case.root_skips and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    before = snapshot(world)
    code, stdout, stderr = run_case(case, world)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    shown = f"exit {code}\nstderr: {stderr}\nstdout: {stdout[-2000:]}"
    assert code == case.code, shown
    assert "Traceback" not in stdout + stderr, shown
    if case.code in (0, 1):
        assert not [ln for ln in lines if ln.startswith("error:")], shown
    else:
        errors = [ln for ln in lines if ln.startswith("error: ")]
        assert len(errors) == 1 and errors == lines[-1:], shown
        if case.needle:
            assert case.needle in errors[0], shown
    assert not (world / MARKER).exists(), "a pickle ran code"
    after = snapshot(world)
    for leaf in case.leaves:
        assert (world / leaf).exists(), shown
        shutil.rmtree(world / leaf)
    after = snapshot(world)
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in before if k in after and after[k] != before[k]
                     and not os.path.isdir(world / k))
    assert not new, f"left behind: {new}\n{shown}"
    assert not changed, f"changed: {changed}\n{shown}"


def test_corpus_size() -> None:
    """The corpus covers every class on every command (the numbers the docs give)."""
    by_class: dict[str, int] = {}
    for c in CASES:
        by_class[c.cls] = by_class.get(c.cls, 0) + 1
    assert set(by_class) == {"checkpoint", "input", "model", "config", "report", "output",
                             "signal", "usage"}
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES if c.cls == "checkpoint"} == {
        "inspect", "check", "trend", "compare", "report"}


@pytest.mark.parametrize("name", ["random", "text", "empty", "truncated", "zeroed", "evil_plain",
                                  "zip_not_torch"])
def test_corrupt_file_is_called_corrupt_without_trust_advice(name: str, world: Path) -> None:
    case = Case("message", name, ("inspect", f"{{w}}/ck/{name}.pt"), 3)
    _, _, stderr = run_case(case, world)
    assert "corrupt" in stderr and "--trust" not in stderr and "weights_only" not in stderr


@pytest.mark.parametrize("name", ["evil_zip", "evil_legacy"])
def test_pickled_objects_are_refused_with_trust_advice(name: str, world: Path) -> None:
    _, _, stderr = run_case(Case("message", name, ("inspect", f"{{w}}/ck/{name}.pt"), 3), world)
    assert "--trust" in stderr and "posix.mkdir" in stderr and "weights_only" not in stderr
    assert not (world / MARKER).exists()


def test_newline_in_a_name_is_escaped(world: Path) -> None:
    _, _, stderr = run_case(Case("message", "nl", ("inspect", "{w}/ck/new\nline.pt"), 3), world)
    assert stderr.count("\n") == 1 and "new\\nline.pt" in stderr


def test_config_error_names_the_field(world: Path) -> None:
    _, _, stderr = run_case(Case("message", "cfg", ("inspect", "{w}/sd.pt", "--config",
                                                    "{w}/cfg/inverted.toml"), 2), world)
    assert "near_constant_fail" in stderr and "inverted" in stderr


def test_report_error_names_the_field(world: Path) -> None:
    _, _, stderr = run_case(Case("message", "rep", ("compare", "{w}/rep/mask_std_string.json",
                                                    "{w}/good.json"), 3), world)
    assert "blocks[0].masks." in stderr and ".std must be number or null" in stderr
