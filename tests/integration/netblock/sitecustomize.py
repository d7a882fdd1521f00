"""Network blocker for the integration suite.

Put this folder on ``PYTHONPATH`` and set ``COORDATT_DIAG_NO_NETWORK=1``: every Python process
(the ``coordatt-diag`` CLI run as a subprocess, ``make_checkpoints.py``) then refuses DNS look-ups
and AF_INET/AF_INET6 connections with ``NetworkBlockedError`` (an ``OSError``). Libraries often
swallow such errors (Ultralytics' ``is_url`` / ``check_font`` do), so every attempt is also
recorded: in ``ATTEMPTS`` and, when ``COORDATT_DIAG_NETLOG`` names a file, appended to it, one
line per attempt, for the parent process to check. AF_UNIX sockets stay allowed.

Self-contained on purpose (no imports from the test folder): it is loaded by ``site`` at startup.
The in-process pytest fixture loads the same file with importlib and calls ``install()``.
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any

ENV_FLAG = "COORDATT_DIAG_NO_NETWORK"
ENV_LOG = "COORDATT_DIAG_NETLOG"

ATTEMPTS: list[str] = []
_saved: dict[str, Any] = {}


class NetworkBlockedError(OSError):
    """Raised instead of any network access while the blocker is installed."""


def _record(what: str) -> None:
    depth = int(os.environ.get("COORDATT_DIAG_NETLOG_DEPTH", "8"))
    caller = "".join(traceback.format_stack(limit=depth)[:-2]).replace("\n", " | ")
    line = f"{what} [pid {os.getpid()}] {caller}"
    ATTEMPTS.append(line)
    path = os.environ.get(ENV_LOG)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass


def _blocked(what: str) -> NetworkBlockedError:
    _record(what)
    return NetworkBlockedError(f"network access blocked in the integration tests: {what}")


def _is_unix(sock: socket.socket) -> bool:
    return getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX


def _connect(self: socket.socket, address: Any) -> None:
    if _is_unix(self):
        return _saved["connect"](self, address)
    raise _blocked(f"connect {address!r}")


def _connect_ex(self: socket.socket, address: Any) -> int:
    if _is_unix(self):
        return _saved["connect_ex"](self, address)
    raise _blocked(f"connect_ex {address!r}")


def _sendto(self: socket.socket, *args: Any) -> int:
    if _is_unix(self):
        return _saved["sendto"](self, *args)
    raise _blocked(f"sendto {args[-1]!r}")


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    raise _blocked(f"getaddrinfo {host!r}")


def _gethostbyname(host: Any, *args: Any) -> Any:
    raise _blocked(f"gethostbyname {host!r}")


def _create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
    raise _blocked(f"create_connection {address!r}")


def install() -> None:
    """Block the network in this process (idempotent)."""
    if _saved:
        return
    _saved.update(
        connect=socket.socket.connect,
        connect_ex=socket.socket.connect_ex,
        sendto=socket.socket.sendto,
        getaddrinfo=socket.getaddrinfo,
        gethostbyname=socket.gethostbyname,
        gethostbyname_ex=socket.gethostbyname_ex,
        create_connection=socket.create_connection,
    )
    socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = _sendto  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]
    socket.gethostbyname = _gethostbyname  # type: ignore[assignment]
    socket.gethostbyname_ex = _gethostbyname  # type: ignore[assignment]
    socket.create_connection = _create_connection  # type: ignore[assignment]


def uninstall() -> None:
    """Restore the network functions saved by ``install()``."""
    if not _saved:
        return
    socket.socket.connect = _saved["connect"]  # type: ignore[method-assign]
    socket.socket.connect_ex = _saved["connect_ex"]  # type: ignore[method-assign]
    socket.socket.sendto = _saved["sendto"]  # type: ignore[method-assign]
    socket.getaddrinfo = _saved["getaddrinfo"]
    socket.gethostbyname = _saved["gethostbyname"]
    socket.gethostbyname_ex = _saved["gethostbyname_ex"]
    socket.create_connection = _saved["create_connection"]
    _saved.clear()


if os.environ.get(ENV_FLAG) == "1":
    install()
