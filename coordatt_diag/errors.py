"""Domain errors of coordatt-diag and the exit code each one maps to.

Library code raises these with a one-line message that names the problem and the fix; the CLI
(`coordatt_diag.cli`) is the one boundary that turns them into an exit code and a line on stderr.

| exit code | meaning |
|---|---|
| 0 | the command ran (for `inspect`/`report`, whatever the health) |
| 1 | `check` only: the model is unhealthy at or above `--fail-on` |
| 2 | usage error (bad option, bad regex, bad config file) |
| 3 | checkpoint or input error (corrupt file, refused pickle, missing class, no blocks found, |
|   | unreadable inputs, wrong channel count) |
| 4 | internal error (a bug in coordatt-diag: please report it with `--debug` output) |
"""

from __future__ import annotations

import os
import re
import shlex

#: Option references inside a message: ``opt("imgsz")`` marks where a setting is named, so the
#: same message reads ``--imgsz`` on the command line and ``imgsz`` to a Python caller.
_MARK = "\x1f"
_QUOTE = "\x1e"  # the value is a string: quoted for Python (and for a shell when it must be)
_OPT_RE = re.compile(_MARK + r"([a-z_]+)(?:=([^" + _MARK + r"]*))?" + _MARK)
#: Python names whose command-line flag is spelled differently (InspectOptions field -> flag).
_CLI_NAMES = {"imports": "import", "paths": "path", "fmt": "format"}


def opt(name: str, value: object = None) -> str:
    """A reference to the setting `name` (an `InspectOptions` field or argument name) in an
    error message, with an optional value.

    Rendered by `DiagError.cli_message` as the flag (``--batch-size 4``, ``--trust``,
    ``--blocks 'a(b'``, quoted as a shell needs) and by ``str(error)`` for Python callers as the
    argument (``batch_size=4``, ``trust=True``, ``blocks='a(b'``).
    """
    if value is None:
        return f"{_MARK}{name}{_MARK}"
    text = str(value) if not isinstance(value, (str, os.PathLike)) else _QUOTE + str(value)
    return f"{_MARK}{name}={text}{_MARK}"


def render_options(message: str, cli: bool) -> str:
    """`message` with its `opt` references spelled for the command line or for Python."""
    def one(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        quoted = value is not None and value.startswith(_QUOTE)
        if quoted:
            value = value[1:]
        if cli:
            flag = "--" + _CLI_NAMES.get(name, name).replace("_", "-")
            if value is None or value == "True":
                return flag
            return f"{flag} {shlex.quote(value) if quoted else value}"
        if value is None:
            return name
        return f"{name}={value!r}" if quoted else f"{name}={value}"
    return _OPT_RE.sub(one, message)


EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_INTERNAL = 4


class DiagError(Exception):
    """Base class: an expected failure with a user-facing one-line message.

    The message may name settings through `opt`; ``str(error)`` names them as Python arguments
    (``imgsz``, ``trust=True``), `cli_message` as command-line flags (``--imgsz``, ``--trust``).
    """

    exit_code = EXIT_INTERNAL

    @property
    def raw(self) -> str:
        """The message with its `opt` marks (what travels between torchrun ranks)."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return render_options(self.raw, cli=False)

    def cli_message(self) -> str:
        """The message as the command line shows it, settings named by their flags."""
        return render_options(self.raw, cli=True)


class UsageError(DiagError):
    """The command line or a configuration file is wrong."""

    exit_code = EXIT_USAGE


class CheckpointError(DiagError):
    """The checkpoint cannot be read, is refused, or does not hold a model we can run."""

    exit_code = EXIT_INPUT


class InputError(DiagError):
    """The sample inputs cannot be read or do not fit the model."""

    exit_code = EXIT_INPUT


class NoBlocksError(DiagError):
    """No attention block was found in the model."""

    exit_code = EXIT_INPUT
