"""The `inspect` process: what it imports beyond torch, and how it exits.

Each test starts a fresh interpreter (the test session itself has imported everything).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

#: Never on the inspect path: torch's compiler stack (over a second of import and a slower exit),
#: the plots (`report` only), the schema validator (tests only), image decoding (--images only).
FORBIDDEN = ("torch._dynamo", "torch._inductor", "torch.fx.experimental.symbolic_shapes", "sympy",
             "matplotlib", "jsonschema", "PIL", "rich.progress")

# An exit handler registered before the command reports what was imported: it also shows that
# exit handlers still run, and that stdout is flushed, after the command's quick exit.
_DRIVER = """
import atexit, json, sys
forbidden = {forbidden!r}
atexit.register(lambda: print("MODULES", json.dumps(sorted(m for m in forbidden
                                                            if m in sys.modules))))
sys.argv = ["coordatt-diag", *{argv!r}]
from coordatt_diag.cli import main
main()
print("NOT REACHED")
"""


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    code = _DRIVER.format(forbidden=FORBIDDEN, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300, check=False)


def _digits(tmp_path: Path, *extra: str) -> list[str]:
    return ["inspect", str(EXAMPLES / "digits_healthy.pt"), "--model",
            "coordatt_diag.demo:digits_net", "--tensors", str(EXAMPLES / "digits_samples.pt"),
            "--json", str(tmp_path / "r.json"), *extra]


def test_inspect_imports_no_compiler_plots_or_schema_and_exits_with_its_status(
        tmp_path: Path) -> None:
    res = _run(_digits(tmp_path), tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "MODULES []", res.stdout[-2000:]  # nothing forbidden, handler ran last
    assert "NOT REACHED" not in res.stdout
    assert "blocks:" in res.stdout  # the terminal report came out before the quick exit
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["blocks"] == 3


def test_a_failing_command_keeps_its_exit_status(tmp_path: Path) -> None:
    res = _run(["inspect", str(tmp_path / "missing.pt")], tmp_path)
    assert res.returncode == 3, (res.stdout, res.stderr)  # a checkpoint error
    assert res.stderr.startswith("error:")
    assert res.stdout.strip().splitlines()[-1] == "MODULES []"


def test_usage_errors_keep_typers_status(tmp_path: Path) -> None:
    res = _run(["inspect", "--no-such-option"], tmp_path)
    assert res.returncode == 2
    assert "No such option" in res.stderr
