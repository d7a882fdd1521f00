"""Domain errors of coordatt-diag and the exit code each one maps to.

Library code raises these with a one-line message that names the problem and the fix; the CLI
(`coordatt_diag.cli`) is the one boundary that turns them into an exit code and a line on stderr
(`docs/exit-codes.md` lists every code and what returns it).

| exit code | meaning |
|---|---|
| 0 | the command ran (for `inspect`/`report`/`trend`/`compare`, whatever the health) |
| 1 | `check` only: the model is unhealthy at or above `--fail-on` |
| 2 | usage error: a bad option, regex, config file or output path (an output that cannot be |
|   | written: a folder, a read-only folder, a full disk, the input checkpoint itself) |
| 3 | checkpoint or input error (corrupt file, refused pickle, missing class, no blocks found, |
|   | unreadable inputs or report JSON, a model whose factory or forward pass fails) |
| 4 | internal error (a bug in coordatt-diag: please report it with `--debug` output) |
| 130 | interrupted (SIGINT, Ctrl-C): nothing was written |
| 143 | terminated (SIGTERM, as CI runners send on cancel): nothing was written |
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
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: Every exit code the CLI can return, and what it means (docs/exit-codes.md is checked against it).
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_UNHEALTHY: "check: unhealthy",
    EXIT_USAGE: "usage error",
    EXIT_INPUT: "checkpoint or input error",
    EXIT_INTERNAL: "internal error",
    EXIT_SIGINT: "interrupted (SIGINT)",
    EXIT_SIGTERM: "terminated (SIGTERM)",
}


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


class OutputError(UsageError):
    """An output file or folder cannot be written (a usage error: name another path)."""


class CheckpointError(DiagError):
    """The checkpoint cannot be read, is refused, or does not hold a model we can run."""

    exit_code = EXIT_INPUT


class InputError(DiagError):
    """The sample inputs cannot be read or do not fit the model."""

    exit_code = EXIT_INPUT


class NoBlocksError(DiagError):
    """No attention block was found in the model."""

    exit_code = EXIT_INPUT


class Interrupted(BaseException):  # noqa: N818 - a signal, not an error
    """The process got SIGINT or SIGTERM; raised in the main thread by the CLI's handler.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it and every
    `finally` and staged output cleans up on the way out.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


def show_path(path: object) -> str:
    """A file name as messages print it: control characters (a newline in a name) escaped, so an
    error stays one line and the name cannot forge another."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def one_line(text: str, limit: int = 300) -> str:
    """`text` as one line: control characters escaped, cut at `limit` characters with an ellipsis."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    flat = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in flat)
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."
