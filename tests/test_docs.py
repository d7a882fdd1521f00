"""The README and docs/ say what the tool does, and what they show runs.

* Every command and option is documented (README or docs/commands.md), with an example.
* The README stays a first read: under 200 lines, its links resolve, no pointer to files that are
  not in the repository.
* Every code block that runs is run: a fenced block whose language is ``bash`` or ``python`` is
  executed (in a scratch folder that sees `examples/`); ``bash no-run`` / ``python no-run`` marks
  a block that names files a reader has and the tests do not (a training run's weights, a CI
  runner's paths). In a ``bash`` block each command is `coordatt-diag ...` or `python ...`,
  joined by `&&` at most, with `pip install ...` steps skipped (the suite runs installed).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from coordatt_diag.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
COMMANDS_DOC = DOCS["docs/commands.md"]
COMMAND = typer.main.get_command(app)
COMMANDS = sorted(COMMAND.commands)  # type: ignore[attr-defined]
#: Pages another change adds (issue 18 writes the full exit-code page); linked from the README.
WRITTEN_ELSEWHERE = {"docs/exit-codes.md"}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


def _blocks() -> list[tuple[str, str, str]]:
    """(id "file:line", language, code) of every runnable block in the README and docs/."""
    out = []
    for name, text in {"README.md": README, **DOCS}.items():
        for m in _FENCE.finditer(text):
            info = m.group(1).split()
            if info and info[0] in ("bash", "python") and "no-run" not in info[1:]:
                line = text.count("\n", 0, m.start()) + 1
                out.append((f"{name}:{line}", info[0], m.group(2)))
    return out


@pytest.mark.parametrize("name", COMMANDS)
def test_command_documented_with_example(name: str) -> None:
    assert re.search(rf"^## `coordatt-diag {name}\b", COMMANDS_DOC, re.M), \
        f"no section for {name} in docs/commands.md"
    assert f"coordatt-diag {name} " in COMMANDS_DOC.split("## `coordatt-diag", 1)[1]
    assert f"`coordatt-diag {name}" in README, f"{name} is not in the README's command table"


@pytest.mark.parametrize(
    ("name", "option"),
    [(n, o) for n in COMMANDS for p in COMMAND.commands[n].params
     for o in p.opts if o.startswith("--")],
)
def test_option_documented(name: str, option: str) -> None:
    assert f"`{option}" in COMMANDS_DOC or f"`{option}" in README, \
        f"{option} of {name} is in neither docs/commands.md nor the README"


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_has_example(name: str) -> None:
    help_text = COMMAND.commands[name].help or ""
    assert "Example:" in help_text and f"coordatt-diag {name}" in help_text


def test_readme_is_a_first_read() -> None:
    assert len(README.splitlines()) < 200
    first_screen = "\n".join(README.splitlines()[:25])
    assert "pip install -e ." in first_screen and "bash scripts/test.sh" in first_screen
    for text in (README, *DOCS.values()):
        assert "NOTES.md" not in text and "shared/seeds" not in text


def test_links_resolve() -> None:
    for name, text in {"README.md": README, **DOCS}.items():
        base = (ROOT / name).parent
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            path = (base / target).resolve()
            rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else target
            assert path.exists() or rel in WRITTEN_ELSEWHERE, f"{name}: broken link {target}"


def test_ci_recipes_install_from_the_checkout() -> None:
    ci = DOCS["docs/ci.md"]
    installs = re.findall(r"pip install [^\n]*", ci)
    assert installs and all("coordatt-diag" not in i or "./coordatt-diag" in i for i in installs)


def test_some_blocks_run() -> None:
    ids = [b[0] for b in _blocks()]
    assert any(i.startswith("README.md") and lang == "python" for i, lang, _ in _blocks())
    assert sum(i.startswith("README.md") for i in ids) >= 2


def _commands(code: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for part in (p.strip() for p in line.split("&&")):
            words = shlex.split(part, comments=True)
            if words[:2] == ["pip", "install"]:
                continue
            if words[0] == "coordatt-diag":
                out.append([sys.executable, "-m", "coordatt_diag", *words[1:]])
            elif words[0] == "python":
                out.append([sys.executable, *words[1:]])
            else:
                raise AssertionError(f"{part!r} cannot run in the tests: mark the block no-run")
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs-run")
    (folder / "examples").symlink_to(ROOT / "examples")
    return folder


@pytest.mark.parametrize(("where", "lang", "code"), _blocks(), ids=[b[0] for b in _blocks()])
def test_code_block_runs(where: str, lang: str, code: str, scratch: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "COLUMNS": "120", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    runs = [[sys.executable, "-c", code]] if lang == "python" else _commands(code)
    for cmd in runs:
        done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{where}: {shlex.join(cmd[1:])}\n{done.stderr[-3000:]}"


def test_every_exit_code_is_documented() -> None:
    """The README's table and docs/exit-codes.md list every code the CLI can return."""
    from coordatt_diag.errors import EXIT_CODES

    docs = (Path(__file__).resolve().parent.parent / "docs" / "exit-codes.md").read_text()
    readme_codes = set(re.findall(r"^\| (\d+) \|", README.split("## Exit codes", 1)[1]
                                  .split("\n## ", 1)[0], re.M))
    docs_codes = set(re.findall(r"^\| (\d+) \|", docs.split("## Outputs", 1)[0], re.M))
    assert readme_codes == {str(c) for c in EXIT_CODES}
    assert docs_codes == {str(c) for c in EXIT_CODES}


def test_the_readme_coverage_table_adds_up_to_the_generated_coverage_page() -> None:
    page = (ROOT / "docs" / "coverage.md").read_text()
    m = re.search(r"found (\d+)/(\d+), exact (\d+)/(\d+); negatives clean (\d+)/(\d+)", page)
    assert m is not None
    rows = re.findall(r"^\| [^|]+ \| (\d+)/(\d+) \| (\d+)/(\d+) \|$", README, re.M)
    assert len(rows) == len(re.findall(r"^\| [^|]+ \| [^|]+ \| [^|]+ \| \d+/\d+ \| \d+/\d+ \|$",
                                       page, re.M))  # one README row per family of the page
    found = sum(int(r[0]) for r in rows), sum(int(r[1]) for r in rows)
    exact = sum(int(r[2]) for r in rows), sum(int(r[3]) for r in rows)
    assert found == (int(m[1]), int(m[2])) and exact == (int(m[3]), int(m[4]))
    assert f"clean {m[5]}/{m[6]}" in README
