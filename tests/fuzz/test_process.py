"""The cases where a real process is the point: signals sent from outside (SIGTERM as a CI
runner's cancel, SIGINT as Ctrl-C), a stdout closed by its reader (`| head`, `| true`), and
`--json /dev/stdout`. The processes run side by side to keep the suite fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.fuzz import models

ROOT = Path(__file__).resolve().parents[2]
RUN = ["--imgsz", "8", "--batch-size", "2"]


def _start(args: list[str], tmp: Path, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp / "tmp"), "NO_COLOR": "1",
           "OMP_NUM_THREADS": "1", "FUZZ_STARTED": str(tmp / "started")}
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.pop("GITHUB_ACTIONS", None)
    return subprocess.Popen([sys.executable, "-m", "coordatt_diag", *args], cwd=tmp, env=env,
                            stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _wait_started(tmp: Path, p: subprocess.Popen[bytes], limit: float = 120) -> None:
    end = time.monotonic() + limit
    while not (tmp / "started").exists():
        assert p.poll() is None, p.communicate()[1].decode()
        assert time.monotonic() < end, "the run did not start"
        time.sleep(0.05)


def _world(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tmp").mkdir()
    (tmp / "out").mkdir()
    torch.save(models.tiny().state_dict(), tmp / "sd.pt")
    return tmp


def _one_error(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in stderr.decode()
    return lines[0]


def test_signals_and_pipes(tmp_path: Path) -> None:
    term, intr, pipe, pipe_inspect, stdout_json = (
        _world(tmp_path / n) for n in ("term", "int", "pipe", "pipe_inspect", "stdout"))
    slow = ["--model", "tests.fuzz.models:slow", *RUN, "--batches", "100000"]
    tiny = ["--model", "tests.fuzz.models:tiny", *RUN, "--batches", "1"]
    procs = {
        # SIGTERM mid-run: exit 143, no output file, nothing in the temporary folder
        "term": _start(["check", "sd.pt", *slow, "--json", "out/c.json", "--junit",
                        "out/c.xml", "--write-baseline", "out/b.json"], term,
                       stdout=subprocess.DEVNULL),
        # SIGINT mid-run of report: exit 130, no report folder, no staging folder
        "int": _start(["report", "sd.pt", *slow, "--out", "out/rep", "--overlays", "0"], intr,
                      stdout=subprocess.DEVNULL),
        # stdout closed before the table is printed: check keeps its verdict and writes its file
        "pipe": _start(["check", "sd.pt", *tiny, "--json", "out/ok.json"], pipe,
                       stdout=subprocess.PIPE),
        "pipe_inspect": _start(["inspect", "sd.pt", *tiny, "--json", "out/i.json"], pipe_inspect,
                               stdout=subprocess.PIPE),
        # --json /dev/stdout writes into the pipe, not over the symlink
        "stdout": _start(["inspect", "sd.pt", *tiny, "--json", "/dev/stdout"], stdout_json,
                         stdout=subprocess.PIPE),
    }
    for name in ("pipe", "pipe_inspect"):
        procs[name].stdout.close()  # type: ignore[union-attr]
    _wait_started(term, procs["term"])
    procs["term"].send_signal(signal.SIGTERM)
    _wait_started(intr, procs["int"])
    procs["int"].send_signal(signal.SIGINT)
    results = {n: (p.communicate(timeout=300), p.returncode) for n, p in procs.items()}

    (_, err), code = results["term"]
    assert code == 143, err.decode()
    assert "SIGTERM" in _one_error(err)
    assert not list((term / "out").iterdir()) and not list((term / "tmp").iterdir())
    (_, err), code = results["int"]
    assert code == 130, err.decode()
    assert "SIGINT" in _one_error(err)
    assert not list((intr / "out").iterdir()) and not list((intr / "tmp").iterdir())

    (_, err), code = results["pipe"]
    assert code == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert json.loads((pipe / "out" / "ok.json").read_text())["checkpoints"]
    (_, err), code = results["pipe_inspect"]
    assert code == 0, err.decode()
    assert json.loads((pipe_inspect / "out" / "i.json").read_text())["blocks"]

    (out, err), code = results["stdout"]
    assert code == 0, err.decode()
    assert '"schema": "coordatt-diag/report@1"' in out.decode()
    assert Path("/dev/stdout").is_symlink() or not Path("/dev/stdout").is_file()
