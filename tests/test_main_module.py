"""A model pickled from a training script's `__main__` (torch.save(model) in train.py) loads with
`--main-module train.py` without running the script's training, and a script with work outside
its `if __name__ == "__main__":` block is refused before any of it runs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coordatt_diag.cli import app
from coordatt_diag.errors import CheckpointError, UsageError
from coordatt_diag.load.checkpoint import load_model, unguarded_code
from coordatt_diag.runs.inspect import InspectOptions, inspect_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# A training script in the shape people write: classes at the top, the run under the guard.
# Its "training" writes a marker and (re)saves the checkpoint, so a test sees whether it ran.
TRAIN = '''\
import sys
from pathlib import Path

import torch
from torch import nn

from coordatt_diag.blocks import CoordinateAtt

EPOCHS = 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.att = CoordinateAtt(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.att(self.stem(x)).mean((2, 3)))


if __name__ == "__main__":
    torch.manual_seed(0)
    out = Path(sys.argv[1])
    (out.parent / "trained.marker").write_text("the training ran")
    torch.save(Net(), out)
'''


@pytest.fixture(scope="module")
def pickled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train.py, the checkpoint it saved), the model's classes recorded as __main__.X."""
    folder = tmp_path_factory.mktemp("script")
    script = folder / "train.py"
    script.write_text(TRAIN)
    ckpt = folder / "model.pt"
    subprocess.run([sys.executable, str(script), str(ckpt)], check=True, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert b"__main__" in ckpt.read_bytes()
    (folder / "trained.marker").unlink()
    return script, ckpt


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_main_module_loads_without_running_the_script(pickled: tuple[Path, Path]) -> None:
    script, ckpt = pickled
    before = _sha(ckpt)
    report = inspect_checkpoint(str(ckpt), InspectOptions(
        trust=True, main_module=str(script), imgsz=16, batches=1, batch_size=2))
    assert [b.name for b in report.blocks] == ["att"]
    assert not (script.parent / "trained.marker").exists(), "the training script's guard ran"
    assert _sha(ckpt) == before


def test_without_main_module_the_error_names_it(pickled: tuple[Path, Path]) -> None:
    _, ckpt = pickled
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt, trust=True)
    assert "main_module='train.py'" in str(err.value)
    assert "--main-module train.py" in err.value.cli_message()
    # without trust, the refusal lists the __main__ classes and says the same
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt)
    assert "__main__.Net" in str(err.value) and "main_module=" in str(err.value)


def test_main_module_needs_trust(pickled: tuple[Path, Path]) -> None:
    script, ckpt = pickled
    with pytest.raises(UsageError, match="trust=True"):
        load_model(ckpt, main_module=script)


def test_script_without_guard_is_refused_before_it_runs(pickled: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    _, ckpt = pickled
    unguarded = tmp_path / "train.py"
    marker = tmp_path / "ran.marker"
    # the same classes, but the work at the top level: importing it would train
    unguarded.write_text(TRAIN.split('if __name__')[0]
                         + f"Path({str(marker)!r}).write_text('ran')\n")
    with pytest.raises(UsageError) as err:
        load_model(ckpt, trust=True, main_module=unguarded)
    message = str(err.value)
    assert "runs code when imported, at line" in message and "Path(" in message
    assert 'if __name__ == "__main__":' in message and "imports='MODULE'" in message
    assert not marker.exists()


def test_cli_main_module(runner: Any, pickled: tuple[Path, Path]) -> None:
    script, ckpt = pickled
    result = runner.invoke(app, ["inspect", str(ckpt), "--trust", "--main-module", str(script),
                                 "--imgsz", "16", "--batches", "1", "--json", "-"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert '"name": "att"' in result.stdout
    result = runner.invoke(app, ["inspect", str(ckpt), "--trust", "--imgsz", "16"],
                           catch_exceptions=False)
    assert result.exit_code == 3
    assert "--main-module train.py" in result.stderr and "main_module=" not in result.stderr
    assert not (script.parent / "trained.marker").exists()


@pytest.mark.parametrize(("source", "lines"), [
    ("import torch\nclass A: pass\nX = 1\nif __name__ == '__main__':\n    train()\n", []),
    ('"""doc"""\nif "__main__" == __name__:\n    train()\n', []),
    ("def f(): pass\nf()\n", [2]),
    ("for i in range(3):\n    pass\n", [1]),
    ("try:\n    import x\nexcept ImportError:\n    print('no x')\n", [4]),
    ("if DEBUG:\n    with open('f') as fh:\n        pass\n", [2]),
    ("DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')\n"
     "ROOT: Path = Path(__file__).parent / 'data'\n", []),
    ("model = Net()\nhistory = fit(model, epochs=EPOCHS)\n", [1, 2]),
])
def test_unguarded_code(source: str, lines: list[int]) -> None:
    assert [line for line, _ in unguarded_code(source)] == lines
