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

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_INTERNAL = 4


class DiagError(Exception):
    """Base class: an expected failure with a user-facing one-line message."""

    exit_code = EXIT_INTERNAL


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
