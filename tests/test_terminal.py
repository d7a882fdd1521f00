"""What a person reads in a terminal: inspect, check, trend and compare at 80 and 120 columns with
no cell cut, the verdict in words, findings grouped with each remedy once, the legend, the check
wording, the help panels, and the Ultralytics spellings of --device."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from coordatt_diag.cli import app
from coordatt_diag.errors import UsageError
from coordatt_diag.load import devices
from coordatt_diag.reports.terminal import make_console, render
from coordatt_diag.reports.wording import group_findings, merge_messages
from coordatt_diag.results import Ablation, Finding, MaskEffect, Report

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"
COLLAPSED, HEALTHY = str(EX / "digits_collapsed.pt"), str(EX / "digits_healthy.pt")
DEMO = ["--model", "coordatt_diag.demo:digits_net", "--tensors", str(EX / "digits_samples.pt")]
WIDTHS = (80, 120)


def _run(*args: str, width: int = 80) -> Any:
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": str(width), "TERM": "dumb",
                            "GITHUB_ACTIONS": None, "GITHUB_STEP_SUMMARY": None, "CI": None})
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The demo pair's report JSON (the numbers the screens must show whole)."""
    folder = tmp_path_factory.mktemp("json")
    out = {}
    for name, path in (("collapsed", COLLAPSED), ("healthy", HEALTHY)):
        target = folder / f"{name}.json"
        assert _run("inspect", path, *DEMO, "--json", str(target)).exit_code == 0
        out[name] = json.loads(target.read_text())
    return out


@pytest.fixture(scope="module")
def screens(reports: dict[str, dict[str, Any]]) -> dict[tuple[str, int], Any]:
    """Each command's result at each width."""
    out = {}
    for width in WIDTHS:
        out["inspect", width] = _run("inspect", COLLAPSED, *DEMO, width=width)
        out["check", width] = _run("check", HEALTHY, COLLAPSED, *DEMO, width=width)
        out["trend", width] = _run("trend", HEALTHY, COLLAPSED, *DEMO, width=width)
        out["compare", width] = _run("compare", HEALTHY, COLLAPSED, *DEMO, width=width)
    return out


def _numbers(report: dict[str, Any]) -> list[str]:
    """Every mask's std and positional std and every block's std ratio, as the tables print
    them."""
    out = []
    for b in report["blocks"]:
        out.append(f"{b['std_ratio']['mean']:.3f}")
        for m in b["masks"].values():
            out += [f"{m['std']:.4f}", f"{m['pos_std']:.4f}"]
    return out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", ["inspect", "check", "trend", "compare"])
def test_no_cell_is_cut(screens: dict[tuple[str, int], Any], reports: dict[str, dict[str, Any]],
                        command: str, width: int) -> None:
    result = screens[command, width]
    assert result.exit_code == (1 if command == "check" else 0), result.output
    text = result.stdout
    assert "…" not in text and "..." not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    names = [display for display in ("stage1.att", "stage2.att", "stage3.att")]
    for name in names:
        assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", text, re.M), name
    wanted = _numbers(reports["collapsed"])
    if command in ("check", "trend", "compare"):
        wanted += _numbers(reports["healthy"])
    for number in wanted:
        assert number in text, (number, command, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_trend_labels_break_between_words(screens: dict[tuple[str, int], Any], width: int) -> None:
    """A checkpoint's label never splits inside its file name; at 80 columns the number
    columns' headers take two lines instead."""
    text = screens["trend", width].stdout
    table = text.split("stage1.att (CoordinateAtt)")[1]
    assert "(digits_collapsed.pt)" in table and "(digits_healthy.pt)" in table
    assert re.search(r"^checkpoint\s.*\bstatus$", table, re.M)
    if width == 80:
        assert re.search(r"^\s+a_h\s+a_w\s+a_h pos\s+a_w pos\s+std\s*$", table, re.M)
    else:
        assert "a_h pos std" in table and "std ratio" in table


def test_compact_table_below_120_columns_and_wide_from_120(
        screens: dict[tuple[str, int], Any]) -> None:
    narrow, wide = screens["inspect", 80].stdout, screens["inspect", 120].stdout
    assert "sat<=.01" not in narrow and "min" not in narrow.split("Legend")[0]
    # the compact table keeps the type and feature size, under the block's name
    assert re.search(r"^stage1\.att\s+a_h\s", narrow, re.M)
    assert re.search(r"^CoordinateAtt 32x16x16\s+a_w\s", narrow, re.M)
    assert re.search(r"^stage1\.att\s+CoordinateAtt\s+32x16x16\s+a_h\s", wide, re.M)
    assert "sat<=.01" in wide
    forced = _run("inspect", COLLAPSED, *DEMO, "--wide", width=80).stdout
    assert "sat<=.01" in forced and "…" not in forced


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("width", WIDTHS)
def test_verdict_legend_and_grouped_findings(screens: dict[tuple[str, int], Any],
                                             width: int) -> None:
    text = screens["inspect", width].stdout
    lines = text.splitlines()
    # the verdict comes before the table
    verdict_at = next(i for i, line in enumerate(lines) if line.startswith("Verdict:"))
    table_at = next(i for i, line in enumerate(lines) if line.startswith("block "))
    assert verdict_at < table_at
    assert ("Verdict: stage1.att, stage2.att: masks stuck at ≈0.50 — the attention does "
            "nothing; stage3.att: healthy") in _flat(text)
    legend = _flat(text.split("Legend:")[1].split("Block internals")[0])
    for term in ("pos std:", "std ratio:", "head std:", "weight RMS:"):
        assert term in legend
    findings = text.split("Findings\n")[1]
    # one line per block and finding, a_h and a_w together, the remedy once
    assert len(re.findall(r"^WARN stage1\.att a_h, a_w \[near_constant\]", findings, re.M)) == 1
    assert len(re.findall(r"^WARN stage2\.att a_h, a_w \[near_constant\]", findings, re.M)) == 1
    assert "WARN stage1.att a_h [" not in findings
    assert _flat(findings).count("remedy: exclude the attention parameters") == 1
    # the remedy names the page that explains it, and that page has the section
    assert _flat(findings).count("(explained in docs/remedies.md#near_constant)") == 1
    page = (Path(__file__).resolve().parents[1] / "docs" / "remedies.md").read_text()
    assert "\n## near_constant\n" in page
    # a_h's and a_w's values side by side, as measured
    assert "std 0.01402/0.01616 < 0.03" in _flat(findings)
    # wrapped lines keep the hanging indent (under the text, not under WARN)
    body = [line for line in findings.splitlines() if line and not line.startswith(("WARN",
                                                                                    "  ->"))]
    body = [line for line in body if not re.match(r"\d+ blocks:", line)]
    assert body and all(line.startswith("     ") for line in body)
    assert "Seed block monitor" not in text and "Block internals" in text


def test_check_wording(reports: dict[str, dict[str, Any]]) -> None:
    healthy = _run("check", HEALTHY, *DEMO)
    assert healthy.exit_code == 0
    assert healthy.stderr.strip().splitlines()[-1] == (
        "check passed: 1 checkpoint healthy at --fail-on fail")
    # the collapsed demo fails by default: near-constant masks count as fail in the gate
    collapsed = _run("check", COLLAPSED, *DEMO)
    assert collapsed.exit_code == 1
    last = collapsed.stderr.strip().splitlines()
    assert last[-1] == ("check failed: 1 of 1 checkpoint unhealthy at --fail-on fail "
                        "(digits_collapsed.pt): 4 findings in 2 blocks")
    assert last[0].startswith(f"FAIL {COLLAPSED} stage1.att: near_constant a_h (0.01402 vs 0.03)")
    # counted as the report counts them, the warnings pass, and the last line says so
    relaxed = _run("check", COLLAPSED, *DEMO, "--level", "near_constant=warn")
    assert relaxed.exit_code == 0
    assert relaxed.stderr.strip().splitlines()[-1] == (
        "check passed with 4 warnings in 2 blocks (warnings do not fail at --fail-on fail; "
        "1 checkpoint)")
    bad = _run("check", COLLAPSED, *DEMO, "--level", "near_constant")
    assert bad.exit_code == 2 and "CODE=LEVEL" in bad.output


def test_effect_and_labels_on_check_trend_compare(tmp_path: Path) -> None:
    labels = str(EX / "digits_labels.pt")
    args = [*DEMO, "--batch-size", "32", "--batches", "2", "--effect", "--labels", labels]
    out = _run("check", COLLAPSED, *args, "--level", "near_constant=warn",
               "--level", "dead_weight=fail", "--json", "-")
    assert out.exit_code in (0, 1), out.output
    data = json.loads(out.stdout)
    assert data["levels"] == {"near_constant": "warn", "dead_weight": "fail"}
    report = data["checkpoints"][0]["report"]
    effects = [b["effect"] for b in report["blocks"]]
    assert all(e is not None and e["samples"] == 64 and e["accuracy"] is not None
               for e in effects)
    dead = [f for b in report["blocks"] for f in b["findings"] if f["code"] == "dead_weight"]
    assert (out.exit_code == 1) == bool(dead)
    trend = tmp_path / "trend.json"
    assert _run("trend", HEALTHY, COLLAPSED, *args, "--json", str(trend)).exit_code == 0
    assert _run("compare", HEALTHY, COLLAPSED, *args).exit_code == 0
    # without --effect, --labels is refused as in inspect
    refused = _run("check", COLLAPSED, *DEMO, "--labels", labels)
    assert refused.exit_code == 2 and "--effect" in refused.output


def test_accuracy_change_reads_as_gain_or_loss(reports: dict[str, dict[str, Any]]) -> None:
    report = Report.from_dict(reports["collapsed"])
    effect = MaskEffect(positional=Ablation(0.1, 0.9, -0.008), constant=Ablation(0.2, 0.8, 0.05),
                        accuracy=0.9, samples=128)
    report = dataclasses.replace(report, blocks=[dataclasses.replace(b, effect=effect)
                                                 for b in report.blocks])
    buf = io.StringIO()
    render(report, make_console(buf, width=80))
    text = buf.getvalue()
    assert "accuracy change" in text and "accuracy drop" not in text
    assert "+0.8%" in text and "-5.0%" in text  # a drop of -0.8% is a gain


@pytest.mark.parametrize("command", ["inspect", "check", "trend", "compare", "report"])
def test_help_panels_and_metavars(command: str) -> None:
    result = _run(command, "-h", width=100)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for panel in ("Model loading", "Inputs", "Outputs", "Device", "Thresholds and gate"):
        assert panel in text, panel
    assert not re.search(r"<(list\[|str>|int>|path>|float>)", text), text
    assert "MODULE:FUNCTION" in text and "DEVICE" in text
    assert result.stdout == _run(command, "--help", width=100).stdout


def test_device_spelled_as_ultralytics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devices.resolve_device("0") == torch.device("cuda", 0)
    assert devices.resolve_device("1") == torch.device("cuda", 1)
    assert devices.resolve_device("0,1") == torch.device("cuda", 0)
    assert devices.resolve_device(" 1, 0 ") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: the rank's entry of the list
    assert devices.resolve_device("0,1") == torch.device("cuda", 1)
    with pytest.raises(UsageError, match="2 CUDA device"):
        devices.resolve_device("3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="CUDA is not available"):
        devices.resolve_device("0")
    with pytest.raises(UsageError, match="is not a device"):
        devices.resolve_device("0;1")


def test_device_0_reaches_the_device_check() -> None:
    result = _run("inspect", HEALTHY, *DEMO, "--device", "0")
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and "CUDA is not available" in result.output
        assert "is not a device" not in result.output


def _finding(mask: str | None, value: float, mean: float, code: str = "near_constant",
             block: str = "b") -> Finding:
    return Finding(code=code, severity="warn", block=block, mask=mask, value=value,
                   threshold=0.03, message=f"{mask} is near-constant: std {value:.4g} < 0.03; "
                   f"it sits at {mean:.3f}", remedy="lower the weight decay")


def test_findings_merge_per_block_and_code() -> None:
    fs = [_finding("a_h", 0.014, 0.503), _finding("a_w", 0.016, 0.501),
          _finding("a_h", 0.011, 0.5, block="c"), _finding(None, 0.2, 0.5, code="other")]
    groups = group_findings(fs)
    assert [(g.block, g.code, g.masks) for g in groups] == [
        ("b", "near_constant", ("a_h", "a_w")), ("c", "near_constant", ("a_h",)),
        ("b", "other", ())]
    assert groups[0].message == "a_h/a_w is near-constant: std 0.014/0.016 < 0.03; it sits at " \
        "0.503/0.501"
    assert groups[0].where == "b a_h, a_w"
    # messages of different shapes are joined, not interleaved
    assert merge_messages(["x is 1", "y has 2 of 3"]) == "x is 1; y has 2 of 3"
    assert merge_messages(["same", "same"]) == "same"


def test_long_block_names_fold_and_the_verdict_counts(reports: dict[str, dict[str, Any]]) -> None:
    """Ultralytics-length names (model.22.cv2.0.att.coordinate) at 80 columns: names fold onto a
    second line, numbers stay whole; a verdict over many blocks names a few and counts the rest."""
    base = Report.from_dict(reports["collapsed"])
    blocks = [dataclasses.replace(b, name=f"model.{10 + 3 * i + j}.cv2.{i}.attention_block.coord")
              for i in range(3) for j, b in enumerate(base.blocks)]
    report = dataclasses.replace(base, blocks=blocks)
    buf = io.StringIO()
    render(report, make_console(buf, width=80))
    text = buf.getvalue()
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    for b in base.blocks:
        for m in b.masks.values():
            assert f"{m.std:.4f}" in text
    # every name is there in full once the folded pieces are joined
    table = text.split("Legend:")[0]
    joined = "".join(line.split(" ")[0] for line in table.splitlines())
    for b in blocks:
        assert b.name in joined
    verdict = _flat(text.split("Verdict:")[1].split("block ")[0])
    assert "and 3 more: masks stuck at ≈0.50" in verdict
    assert "model.12.cv2.0.attention_block.coord, model.15.cv2.1.attention_block.coord, " \
        "model.18.cv2.2.attention_block.coord: healthy" in verdict


def test_step_summary_says_what_the_gate_counted(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "80", "GITHUB_ACTIONS": None, "CI": None,
                            "GITHUB_STEP_SUMMARY": str(summary)})
    result = runner.invoke(app, ["check", COLLAPSED, *DEMO], catch_exceptions=False)
    assert result.exit_code == 1
    text = summary.read_text()
    assert text.startswith("## coordatt-diag check failed: 1 of 1 checkpoint unhealthy")
    assert "- **FAIL** (a warn the gate counts as fail) `stage1.att a_h` `near_constant`" in text


def test_stderr_lines_fold_at_word_boundaries_only_on_a_terminal() -> None:
    from coordatt_diag.reports.check import fold_line

    line = ("FAIL examples/digits_collapsed.pt stage1.att: near_constant a_h (0.01402 vs 0.03), "
            "near_constant a_w (0.01616 vs 0.03)")
    assert fold_line(line, None) == line  # a CI log keeps one line per block
    folded = fold_line(line, 80).splitlines()
    assert len(folded) == 2 and all(len(x) <= 80 for x in folded)
    assert folded[1].startswith("    ") and "0.03)," in folded[0] + folded[1]
    assert " ".join(x.strip() for x in folded) == line  # no token is cut
