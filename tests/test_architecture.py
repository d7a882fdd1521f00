"""docs/architecture.md names files that exist, and every module of the package is named there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _named_paths() -> set[str]:
    paths = set(re.findall(r"`(coordatt_diag/[\w/.]+)`", DOC))
    # bare file names in the layer table are relative to that row's folder
    for row in re.findall(r"^\|[^|]+\| `(coordatt_diag/\w+/)` \|(.*)\|$", DOC, re.M):
        folder, text = row
        paths |= {folder + name for name in re.findall(r"`(\w+\.py)`", text)}
    return paths


def test_every_file_the_doc_names_exists() -> None:
    paths = _named_paths()
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names missing files: {missing}"


def test_every_module_of_the_pipeline_is_named_in_the_doc() -> None:
    paths = _named_paths()
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "coordatt_diag").rglob("*.py")]
    unnamed = sorted(
        m for m in modules
        if not m.endswith("__init__.py") and not m.endswith("__main__.py")
        and m not in paths and not m.startswith("coordatt_diag/blocks/")
    )
    assert not unnamed, f"modules docs/architecture.md does not place: {unnamed}"


def _doc_layers() -> list[set[str]]:
    """The layer table's rows, bottom up, as sets of module names (coordatt_diag.x)."""
    rows = re.findall(r"^\| \d+ [^|]+\| (.+?) \|", DOC, re.M)
    return [{p.strip("`/").removesuffix(".py").replace("/", ".") for p in row.split(", ")}
            for row in rows]


def test_the_doc_table_is_the_import_linter_layers_contract() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    layers = [{m.strip() for m in layer.split("|")} for layer in reversed(contract["layers"])]
    assert layers[0] == {"coordatt_diag.results", "coordatt_diag.errors"}  # under every layer
    assert layers[1:] == _doc_layers()
