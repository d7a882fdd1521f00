"""Output files, written all together or not at all.

Every file a command writes (the JSON, the JUnit XML, the baseline, the trend plots, the report
folder, the GitHub step summary) goes through this module. Inside `staged()` (the CLI wraps each
command in one) a write only *stages* the file: it is rendered into a temporary file beside its
target (`.NAME.XXXX.tmp`), and the targets are put in place by `Outputs.commit()` when the whole
command has succeeded. When anything fails first (an error, SIGINT, SIGTERM) `Outputs.discard()`
removes the temporary files and any folder it created, so nothing new remains. Outside `staged()`
each write commits at once (a reader still sees the old file or the whole new one).

Targets that are not regular files are written in place, never replaced: a character device
(`/dev/null`, a terminal), a FIFO, `/dev/stdout` or `/proc/self/fd/N`. Their write happens at
commit, after the renames; if it fails the renames are undone. A regular file reached through a
symlink is replaced at the symlink's target, so the link stays. Appends (the step summary) are made
at commit and cut back if a later step fails.

A commit holds SIGINT and SIGTERM back (where the process can), and undoes itself if one arrived
meanwhile, so a signal leaves either the old outputs or, never, a mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordatt_diag.errors import OutputError, show_path

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_special(path: Path) -> bool:
    """Whether `path` is written in place rather than replaced: it exists and (after symlinks)
    is not a regular file (a device, a FIFO, a socket), or it lies under /dev or /proc."""
    text = os.path.abspath(path)
    if text.startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output_path(path: Path | str, option: str, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output path before a command runs: empty, a folder, under a regular file or a
    folder that cannot be written, or one of the command's input files.

    Raises:
        OutputError: the path cannot be written, or is an input.
    """
    text = os.fspath(path)
    if not text.strip():
        raise OutputError(f"{option} needs a file name, got an empty one")
    p = Path(text)
    name = show_path(p)
    if text.endswith(os.sep) or p.is_dir():
        raise OutputError(f"{option} {name} is a folder; name a file")
    if is_special(p):
        return
    for inp in inputs:
        try:
            same = p.exists() and Path(inp).exists() and os.path.samefile(p, inp)
        except OSError:
            same = False
        if same:
            raise OutputError(f"{option} {name} is an input of this command ({show_path(inp)}); "
                              "name another file")
    _check_folder(_target(p).parent, option, name)


def check_output_folder(path: str | os.PathLike[str], option: str) -> None:
    """`check_output_path` for an output folder (created, or replaced at commit).

    Raises:
        OutputError: empty, a file, under a file, or in a folder that cannot be written.
    """
    text = os.fspath(path)
    if not text.strip():
        raise OutputError(f"{option} needs a folder name, got an empty one")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} {show_path(p)} is a file; name a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {option} {show_path(p)}: the folder is read-only")
        return
    _check_folder(p.parent, option, show_path(p))


def _check_folder(folder: Path, option: str, name: str) -> None:
    """The nearest existing ancestor of `folder` must be a writable folder."""
    probe = folder if str(folder) else Path(".")
    while True:
        try:
            st = os.stat(probe)
        except FileNotFoundError:
            if probe.parent == probe:
                break
            probe = probe.parent
            continue
        except OSError as exc:
            raise OutputError(f"cannot write {option} {name}: {_reason(exc)}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"cannot write {option} {name}: {show_path(probe)} is not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {option} {name}: {show_path(probe)} is read-only")
        return


def _target(path: Path) -> Path:
    """Where a file at `path` really goes: through symlinks to a regular file (the link stays)."""
    if path.is_symlink():
        with contextlib.suppress(OSError):
            return Path(os.path.realpath(path))
    return path


@dataclass
class _Swap:
    target: Path
    tmp: Path
    backup: Path | None = None
    done: bool = False


@dataclass
class _Append:
    target: Path
    data: bytes
    size: int | None = None  # the size before the append (None: the file was created)
    done: bool = False


@dataclass
class Outputs:
    """The outputs of one command, staged until `commit()`."""

    _swaps: list[_Swap] = field(default_factory=list)
    _direct: list[tuple[Path, bytes]] = field(default_factory=list)
    _appends: list[_Append] = field(default_factory=list)
    _created: list[Path] = field(default_factory=list)
    _committed: bool = False

    # -- staging ---------------------------------------------------------------------------

    def _folder_for(self, target: Path) -> Path:
        """The folder of `target`, created (and remembered, to remove on discard) if missing."""
        folder = target.parent if str(target.parent) else Path(".")
        missing: list[Path] = []
        probe = folder
        while not probe.exists():
            if probe.is_symlink():
                break
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        for f in reversed(missing):
            try:
                f.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(f"cannot write {show_path(target)}: cannot create folder "
                                  f"{show_path(f)}: {_reason(exc)}") from exc
            self._created.append(f)
        if not folder.is_dir():
            raise OutputError(f"cannot write {show_path(target)}: {show_path(folder)} is not a "
                              "folder")
        return folder

    def _forget(self, target: Path) -> None:
        """Drop an earlier staging of the same target (the later write wins)."""
        for s in [s for s in self._swaps if s.target == target]:
            _remove(s.tmp)
            self._swaps.remove(s)
        self._direct = [(t, d) for t, d in self._direct if t != target]

    def write_bytes(self, path: Path | str, data: bytes) -> None:
        """Stage `data` for `path`.

        Raises:
            OutputError: `path` is a folder or its folder cannot be written (a full disk too).
        """
        path = Path(path)
        if not os.fspath(path).strip():
            raise OutputError("cannot write a file with an empty name")
        if is_special(path):
            self._forget(path)
            self._direct.append((path, bytes(data)))
            return
        target = _target(path)
        if target.is_dir():
            raise OutputError(f"cannot write {show_path(path)}: it is a folder")
        folder = self._folder_for(target)
        self._forget(target)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise OutputError(f"cannot write {show_path(path)}: {_reason(exc)}") from exc
        swap = _Swap(target, Path(tmp))
        self._swaps.append(swap)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give what open() would
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {show_path(path)}: {_reason(exc)}") from exc

    def write_text(self, path: Path | str, text: str) -> None:
        """`write_bytes` for UTF-8 text."""
        self.write_bytes(path, text.encode("utf-8"))

    def append_text(self, path: Path | str, text: str) -> None:
        """Append `text` (UTF-8) to `path` at commit (created if missing)."""
        path = Path(path)
        if not os.fspath(path).strip():
            raise OutputError("cannot append to a file with an empty name")
        if path.is_dir():
            raise OutputError(f"cannot write {show_path(path)}: it is a folder")
        self._appends.append(_Append(path, text.encode("utf-8")))

    def folder(self, out: Path | str) -> Path:
        """A new empty temporary folder beside `out`, put at `out` on commit (replacing what is
        there). Fill it, then leave the rest to `commit()` or `discard()`."""
        out = Path(out)
        parent = self._folder_for(out)
        self._forget(out)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; outputs are to share
        except OSError as exc:
            raise OutputError(f"cannot write {show_path(out)}: {_reason(exc)}") from exc
        self._swaps.append(_Swap(out, tmp))
        return tmp

    # -- commit and discard ----------------------------------------------------------------

    def commit(self) -> None:
        """Put every staged output in place; all of them, or (on an error or a signal meanwhile)
        none.

        Raises:
            OutputError: an output could not be put in place (the others are undone).
        """
        if self._committed:
            return
        with _signals_held() as pending:
            try:
                for s in self._swaps:
                    self._swap_in(s)
                for target, data in self._direct:
                    _write_in_place(target, data)
                for a in self._appends:
                    _append(a)
            except BaseException as exc:
                self._undo()
                self.discard()
                if isinstance(exc, OSError):
                    raise OutputError(_os_message(exc)) from exc
                raise
            if pending():
                self._undo()
                self.discard()
                return
            self._committed = True
            for s in self._swaps:
                if s.backup is not None:
                    _remove(s.backup)
            self._swaps.clear()
            self._direct.clear()
            self._appends.clear()
            self._created.clear()

    def _swap_in(self, s: _Swap) -> None:
        if os.path.lexists(s.target):
            backup = Path(tempfile.mkdtemp(prefix=f".{s.target.name}.", suffix=".old",
                                           dir=s.tmp.parent))
            backup.rmdir()
            os.rename(s.target, backup)
            s.backup = backup
        try:
            os.rename(s.tmp, s.target)
        except BaseException:
            if s.backup is not None:
                os.rename(s.backup, s.target)
                s.backup = None
            raise
        s.done = True

    def _undo(self) -> None:
        """Undo a partial commit: appends cut back, new files removed, old ones put back."""
        for a in reversed(self._appends):
            if not a.done:
                continue
            with contextlib.suppress(OSError):
                if a.size is None:
                    os.unlink(a.target)
                else:
                    os.truncate(a.target, a.size)
        for s in reversed(self._swaps):
            if not s.done:
                continue
            _remove(s.target)
            if s.backup is not None:
                with contextlib.suppress(OSError):
                    os.rename(s.backup, s.target)
            s.done = False

    def discard(self) -> None:
        """Remove every temporary file and folder and every folder staging created."""
        for s in self._swaps:
            if not s.done:
                _remove(s.tmp)
        for f in reversed(self._created):
            with contextlib.suppress(OSError):
                f.rmdir()
        self._swaps.clear()
        self._direct.clear()
        self._appends.clear()
        self._created.clear()


def _os_message(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else "an output"
    return f"cannot write {show_path(name)}: {_reason(exc)}"


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)


def _write_in_place(target: Path, data: bytes) -> None:
    """Write to a device, FIFO or /dev/stdout without replacing it (a FIFO without a reader is
    refused rather than waited for)."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = 0
    if stat.S_ISFIFO(mode):
        try:
            fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise OutputError(f"cannot write {show_path(target)}: no process reads the FIFO "
                              f"({_reason(exc)})") from exc
        os.set_blocking(fd, True)
    elif stat.S_ISREG(mode):  # /dev/stdout or /proc/self/fd/1 redirected to a file: append there
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    else:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        raise OutputError(f"cannot write {show_path(target)}: {_reason(exc)}") from exc
    finally:
        os.close(fd)


def _append(a: _Append) -> None:
    try:
        a.size = os.path.getsize(a.target)
    except FileNotFoundError:
        a.size = None
    with open(a.target, "ab") as fh:
        a.done = True
        fh.write(a.data)


@contextlib.contextmanager
def _signals_held() -> Iterator[Callable[[], bool]]:
    """Hold SIGINT and SIGTERM back while the block runs; yield a function telling whether one
    arrived meanwhile. They are delivered, to the handlers they had, when the block ends.

    A signal mask would not do: it holds a signal back from the calling thread only, and the
    kernel hands a process-directed signal to any thread that does not block it (torch's worker
    threads), whose arrival Python then runs on the main thread at once. So the Python-level
    handlers are swapped for one that only notes the signal, and a noted signal is sent again
    after the handlers are back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    got: list[int] = []

    def note(signum: int, frame: object) -> None:
        got.append(signum)

    old: dict[signal.Signals, Any] = {}
    for sig in _SIGNALS:
        handler = signal.getsignal(sig)
        if handler in (signal.SIG_IGN, None):
            continue
        old[sig] = handler
        signal.signal(sig, note)
    try:
        yield lambda: bool(got)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for num in dict.fromkeys(got):
            os.kill(os.getpid(), num)


_current: ContextVar[Outputs | None] = ContextVar("coordatt_diag_outputs", default=None)


def current() -> Outputs | None:
    """The outputs being staged (inside `staged()`), or None."""
    return _current.get()


@contextlib.contextmanager
def staged() -> Iterator[Outputs]:
    """Stage every write inside the block; commit them when it ends normally, discard them when
    it raises (anything, SIGINT and SIGTERM included)."""
    tx = Outputs()
    token = _current.set(tx)
    try:
        try:
            yield tx
        finally:
            _current.reset(token)
        tx.commit()
    except BaseException:
        tx.discard()
        raise


@contextlib.contextmanager
def _one() -> Iterator[Outputs]:
    tx = current()
    if tx is not None:
        yield tx
        return
    with staged() as own:
        yield own


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path`: staged inside `staged()`, else at once through a temporary file
    and a rename (a device or FIFO is written in place).

    Raises:
        OutputError: `path` cannot be written.
    """
    with _one() as tx:
        tx.write_bytes(path, data)


def write_text(path: Path | str, text: str) -> None:
    """`write_bytes` for UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: Path | str, text: str) -> None:
    """Append UTF-8 `text` to `path` (at commit inside `staged()`)."""
    with _one() as tx:
        tx.append_text(path, text)


@contextlib.contextmanager
def staged_folder(out: Path | str) -> Iterator[Path]:
    """A temporary folder to fill, put at `out` (replacing it) when the command commits; at the
    end of the block when no `staged()` is active. Removed if anything fails."""
    with _one() as tx:
        yield tx.folder(out)
