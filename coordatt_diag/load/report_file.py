"""Report JSON files given as inputs (`check --baseline`, `compare A.json B.json`,
`report --from-json`): read safely and validated against the shipped JSON Schema
(`coordatt_diag/schema/report.schema.json`) before anything uses them.

The validator covers the part of JSON Schema (draft 2020-12) that the schema uses: `type`,
`const`, `enum`, `required`, `properties`, `additionalProperties`, `propertyNames`, `items`,
`minItems`, `maxItems`, `minimum`, `maximum`, `pattern`, `oneOf` and local `$ref`s; an unknown
keyword is an error, so the schema cannot grow past it unnoticed (a test checks the shipped
schema with it and against `jsonschema`, which is a development dependency only). It stops at the
first error and names the field (`blocks[2].masks.a_h.std`), so the message is one line.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from coordatt_diag.errors import InputError, one_line, show_path

#: A report JSON larger than this is not a report (a big model's report is a few MiB).
MAX_REPORT_BYTES = 256 * 1024 * 1024
#: Deeper nesting than this is not a report (the schema's deepest field is 7 levels down).
MAX_DEPTH = 64

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}
_KNOWN = frozenset({
    "$schema", "$id", "$defs", "title", "description", "type", "const", "enum", "required",
    "properties", "additionalProperties", "propertyNames", "items", "minItems", "maxItems",
    "minimum", "maximum", "pattern", "oneOf", "$ref",
})


class SchemaError(ValueError):
    """A document does not match the schema; `str()` names the field and what was wrong."""


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    """The shipped report schema."""
    text = resources.files("coordatt_diag").joinpath("schema/report.schema.json").read_text(
        encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _at(path: str) -> str:
    return path or "the document"


def _shown(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, int, float, bool)) or v is None else _kind(v)
    return one_line(text, 60)


def validate(data: Any, schema: dict[str, Any], root: dict[str, Any] | None = None,
             path: str = "") -> None:
    """Check `data` against `schema` (the subset above).

    Raises:
        SchemaError: the first mismatch, naming its field.
    """
    root = root if root is not None else schema
    unknown = set(schema) - _KNOWN
    if unknown:
        raise SchemaError(f"the schema uses {sorted(unknown)}, which this validator does not know")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise SchemaError(f"the schema refers outside itself ({ref})")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        validate(data, target, root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](data) for t in types):
            raise SchemaError(f"{_at(path)} must be {' or '.join(types)}, not {_kind(data)}")
    if "const" in schema and data != schema["const"]:
        raise SchemaError(f"{_at(path)} must be {json.dumps(schema['const'])}, not {_shown(data)}")
    if "enum" in schema and not any(type(data) is type(e) and data == e
                                    for e in schema["enum"]):
        allowed = ", ".join(json.dumps(e) for e in schema["enum"])
        raise SchemaError(f"{_at(path)} must be one of {allowed}, not {_shown(data)}")
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        if isinstance(data, float) and not math.isfinite(data):
            raise SchemaError(f"{_at(path)} must be a finite number, not {data}")
        if "minimum" in schema and data < schema["minimum"]:
            raise SchemaError(f"{_at(path)} must be at least {schema['minimum']}, not {data}")
        if "maximum" in schema and data > schema["maximum"]:
            raise SchemaError(f"{_at(path)} must be at most {schema['maximum']}, not {data}")
    if isinstance(data, str) and "pattern" in schema and not re.search(schema["pattern"], data):
        raise SchemaError(f"{_at(path)} does not match {schema['pattern']}: {_shown(data)}")
    if isinstance(data, list):
        if "minItems" in schema and len(data) < schema["minItems"]:
            raise SchemaError(f"{_at(path)} must have at least {schema['minItems']} items, not "
                              f"{len(data)}")
        if "maxItems" in schema and len(data) > schema["maxItems"]:
            raise SchemaError(f"{_at(path)} must have at most {schema['maxItems']} items, not "
                              f"{len(data)}")
        if "items" in schema:
            for i, item in enumerate(data):
                validate(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(data, dict):
        for key in schema.get("required", []):
            if key not in data:
                raise SchemaError(f"{_at(path)} lacks the field {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if names is not None:
                try:
                    validate(key, names, root, where)
                except SchemaError as exc:
                    raise SchemaError(f"field name {one_line(key, 60)!r} in {_at(path)} is not "
                                      f"allowed ({exc})") from None
            if key in props:
                validate(value, props[key], root, where)
            elif extra is False:
                raise SchemaError(f"{_at(path)} has an unknown field {one_line(key, 60)!r}")
            elif isinstance(extra, dict):
                validate(value, extra, root, where)
    if "oneOf" in schema:
        matches = 0
        first: SchemaError | None = None
        for option in schema["oneOf"]:
            try:
                validate(data, option, root, path)
                matches += 1
            except SchemaError as exc:
                first = first or exc
        if matches != 1:
            if first is not None and matches == 0:
                raise first
            raise SchemaError(f"{_at(path)} matches {matches} of the allowed forms, not one")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counted without recursion (stops past `limit`)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (a report writes null for a missing number)")


def read_json_file(path: Path, what: str) -> Any:
    """Parse the JSON file at `path` (a regular file, UTF-8, strict JSON, not nested deeper than
    `MAX_DEPTH`).

    Raises:
        InputError: naming `what` (e.g. "--baseline") and what is wrong.
    """
    from coordatt_diag.load.checkpoint import check_input_file

    check_input_file(path, what)
    name = show_path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{what} {name} cannot be read: {exc.strerror}") from exc
    if len(raw) > MAX_REPORT_BYTES:
        raise InputError(f"{what} {name} is larger than {MAX_REPORT_BYTES >> 20} MiB: not a "
                         "coordatt-diag report")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {name} is not UTF-8 text (byte {exc.start}): not a report "
                         "JSON") from exc
    deep = InputError(f"{what} {name} is nested more than {MAX_DEPTH} levels deep: not a "
                      "coordatt-diag report")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {name} is not valid JSON (line {exc.lineno}, column "
                         f"{exc.colno}: {exc.msg})") from exc
    except RecursionError:
        raise deep from None
    except ValueError as exc:
        raise InputError(f"{what} {name} is not valid JSON: {one_line(str(exc), 200)}") from exc
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise deep
    return data


def check_report_data(data: Any, path: Path, what: str) -> None:
    """Validate parsed report JSON against the shipped schema.

    Raises:
        InputError: the first field that does not match, with how to write a good file.
    """
    try:
        validate(data, report_schema())
    except SchemaError as exc:
        raise InputError(f"{what} {show_path(path)} is not a coordatt-diag report: {exc}; write "
                         "one with `coordatt-diag inspect --json` or "
                         "`coordatt-diag check --write-baseline`") from None
