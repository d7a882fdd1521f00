"""Every command and every option is documented in the README, with an example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from coordatt_diag.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
COMMAND = typer.main.get_command(app)
COMMANDS = sorted(COMMAND.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", COMMANDS)
def test_command_documented_with_example(name: str) -> None:
    assert re.search(rf"^### `coordatt-diag {name}\b", README, re.M), f"no README section for {name}"
    assert f"coordatt-diag {name} " in README.split("### `coordatt-diag", 1)[1]


@pytest.mark.parametrize(
    ("name", "option"),
    [(n, o) for n in COMMANDS for p in COMMAND.commands[n].params
     for o in p.opts if o.startswith("--")],
)
def test_option_documented(name: str, option: str) -> None:
    assert f"`{option}" in README, f"{option} of {name} is not in the README"


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_has_example(name: str) -> None:
    help_text = COMMAND.commands[name].help or ""
    assert "Example:" in help_text and f"coordatt-diag {name}" in help_text


def test_every_exit_code_is_documented() -> None:
    """The README's table and docs/exit-codes.md list every code the CLI can return."""
    from coordatt_diag.errors import EXIT_CODES

    docs = (Path(__file__).resolve().parent.parent / "docs" / "exit-codes.md").read_text()
    readme_codes = set(re.findall(r"^\| (\d+) \|", README.split("## Exit codes", 1)[1]
                                  .split("\n## ", 1)[0], re.M))
    docs_codes = set(re.findall(r"^\| (\d+) \|", docs.split("## Outputs", 1)[0], re.M))
    assert readme_codes == {str(c) for c in EXIT_CODES}
    assert docs_codes == {str(c) for c in EXIT_CODES}
