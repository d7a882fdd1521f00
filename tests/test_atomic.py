"""Staged outputs (`coordatt_diag.reports.atomic`): all or nothing, special files written in
place, symlinks kept, signals during a commit undo it."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

import pytest

from coordatt_diag.errors import Interrupted, OutputError
from coordatt_diag.reports import atomic
from coordatt_diag.reports.atomic import staged, staged_folder, write_text


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_nothing_is_written_until_commit_and_nothing_after_a_failure(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("old")
    with pytest.raises(ValueError), staged():
        write_text(tmp_path / "old.json", "new")
        write_text(tmp_path / "sub" / "deeper" / "a.txt", "a")
        assert (tmp_path / "old.json").read_text() == "old"  # staged, not yet in place
        raise ValueError("the command failed")
    assert _listing(tmp_path) == ["old.json"]  # no temp file, no folder created for a.txt
    assert (tmp_path / "old.json").read_text() == "old"
    with staged():
        write_text(tmp_path / "old.json", "new")
        write_text(tmp_path / "sub" / "a.txt", "a")
    assert (tmp_path / "old.json").read_text() == "new"
    assert _listing(tmp_path) == ["old.json", "sub", "sub/a.txt"]


def test_a_failing_commit_undoes_what_it_did(tmp_path: Path) -> None:
    (tmp_path / "keep.json").write_text("before")
    with pytest.raises(OutputError, match="/dev/full"), staged():
        write_text(tmp_path / "keep.json", "after")
        write_text(tmp_path / "new.json", "x")
        write_text("/dev/full", "a device that is always full")
    assert _listing(tmp_path) == ["keep.json"]
    assert (tmp_path / "keep.json").read_text() == "before"


def test_special_files_are_written_in_place(tmp_path: Path) -> None:
    with staged():
        write_text("/dev/null", "discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    while True:  # wait until the reader has the FIFO open
        try:
            write_text(fifo, "through the pipe")
            break
        except OutputError:
            continue
    reader.join(10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_fifo_without_reader_is_refused_not_waited_for(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="no process reads"):
        write_text(fifo, "x")


def test_a_symlink_is_kept_and_its_target_replaced(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    write_text(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "real.json").read_text() == "new"


def test_append_is_made_at_commit(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    with pytest.raises(KeyError), staged():
        atomic.append_text(summary, "ours\n")
        raise KeyError("later failure")
    assert summary.read_text() == "earlier step\n"
    with staged():
        atomic.append_text(summary, "ours\n")
    assert summary.read_text() == "earlier step\nours\n"


def test_a_signal_during_commit_undoes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.json").write_text("old")
    summary = tmp_path / "summary.md"
    summary.write_text("x\n")
    real_append = atomic._append

    def append_then_signal(a: atomic._Append) -> None:
        real_append(a)
        os.kill(os.getpid(), signal.SIGTERM)  # held back until the commit ends

    def raise_it(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    monkeypatch.setattr(atomic, "_append", append_then_signal)
    old = signal.signal(signal.SIGTERM, raise_it)
    try:
        with pytest.raises(Interrupted), staged():
            write_text(tmp_path / "a.json", "new")
            write_text(tmp_path / "b.json", "new")
            atomic.append_text(summary, "ours\n")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert _listing(tmp_path) == ["a.json", "summary.md"]
    assert (tmp_path / "a.json").read_text() == "old" and summary.read_text() == "x\n"


def test_staged_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "report"
    with pytest.raises(RuntimeError), staged_folder(out) as tmp:
        (tmp / "index.html").write_text("x")
        raise RuntimeError
    assert _listing(tmp_path) == []
    with staged_folder(out) as tmp:
        (tmp / "index.html").write_text("x")
    assert _listing(tmp_path) == ["new", "new/report", "new/report/index.html"]
    with staged_folder(out) as tmp:  # replaces the previous one
        (tmp / "index.html").write_text("y")
    assert (out / "index.html").read_text() == "y" and _listing(tmp_path)[-1].endswith("html")
    assert len(_listing(tmp_path)) == 3


@pytest.mark.parametrize("path, message", [("", "empty"), ("{t}", "folder"),
                                           ("{t}/file/x.json", "not a folder")])
def test_output_paths_are_checked_first(tmp_path: Path, path: str, message: str) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=message):
        atomic.check_output_path(path.replace("{t}", str(tmp_path)), "--json")
    with pytest.raises(OutputError, match="input"):
        atomic.check_output_path(tmp_path / "file", "--json", (tmp_path / "file",))
