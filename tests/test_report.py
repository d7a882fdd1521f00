"""`coordatt-diag report`: the folder, the self-contained HTML page, the Markdown page, the plots,
--from-json, escaping, overlays, atomic writes, and the page rendered in a real browser."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from coordatt_diag.cli import app
from tests.fixtures import models as fx

SCRIPT_NAME = "<script>alert(1)</script>"
IMGSZ = "32"


def _model() -> nn.Module:
    """CoordAtt and CBAM inside stages, an SE block, and a CoordAtt whose name holds a script."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 16, 3, padding=1))
    model.add_module("coord", fx.InvertedResidual(16, fx.OfficialCoordAtt(32)))
    model.add_module("cbam", fx.InvertedResidual(16, fx.CBAM(32)))
    model.add_module("se", fx.InvertedResidual(16, fx.SEBlock(32)))
    model.add_module(SCRIPT_NAME, fx.OfficialCoordAtt(16))
    return model.eval()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("report-inputs")
    torch.save(_model(), folder / "model.pt")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        yy, xx = np.mgrid[0:40, 0:48]
        base = np.stack([(xx * (i + 1)) % 255, (yy * 5) % 255, (xx + yy * i) % 255], axis=2)
        noise = rng.integers(0, 40, size=base.shape)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(images / f"{i}.png")
    return {"model": folder / "model.pt", "images": images, "folder": folder}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb", "CI": None})


def _run(inputs: dict[str, Path], out: Path, *extra: str, overlays: str = "3") -> Any:
    runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb", "CI": None})
    args = ["report", str(inputs["model"]), "--trust", "--images", str(inputs["images"]),
            "--imgsz", IMGSZ, "--batch-size", "2", "--overlays", overlays, "--out", str(out),
            *extra]
    return runner.invoke(app, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def folder(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report-out") / "diag"
    result = _run(inputs, out)
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output
    return out


class _Page(HTMLParser):
    """Collects tags, attributes and text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


# ---------------------------------------------------------------------------------------------
# The folder


def test_folder_holds_pages_json_and_plots(folder: Path,
                                           validate_report: Any) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["index.html", "plots", "report.json",
                                                        "report.md"]
    data = json.loads((folder / "report.json").read_text())
    validate_report(data)
    names = [b["name"] for b in data["blocks"]]
    assert names == ["coord.att", "cbam.att", "se.att", SCRIPT_NAME]
    plots = sorted(p.name for p in (folder / "plots").iterdir())
    assert "summary.png" in plots and "overlays-1.png" in plots
    for i, name in enumerate(names, start=1):
        assert any(p.startswith(f"b{i:02d}-") and p.endswith("-hist.png") for p in plots), name
    # the SE block has no positional mask: no profile, no overlay
    assert not any(p.startswith("b03-") and ("profile" in p or "overlay" in p) for p in plots)
    assert sum("-overlay." in p for p in plots) == 3
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_pngs_decode_small_and_sized(folder: Path) -> None:
    from coordatt_diag.reports.plots import CELL, DPI

    for png in (folder / "plots").glob("*.png"):
        with Image.open(png) as im:
            im.load()
            assert im.format == "PNG"
            w, h = im.size
        assert 150 <= w <= 1800 and 100 <= h <= 1200, (png.name, im.size)
        assert png.stat().st_size < 200_000, png.name
    # an overlay strip: one cell per sample (3 here), at CELL pixels each
    strip = next((folder / "plots").glob("b01-*-overlay.png"))
    with Image.open(strip) as im:
        assert 3 * CELL <= im.size[0] <= 3 * CELL + 120
        assert CELL <= im.size[1] <= CELL + 80
    # the histogram figure of a two-mask block is two panels wide at DPI
    hist = next((folder / "plots").glob("b01-*-hist.png"))
    with Image.open(hist) as im:
        assert im.size == (round((2.6 * 2 + 0.7) * DPI), round((1.75 + 0.95) * DPI))


def test_html_is_self_contained_and_embeds_every_plot(folder: Path) -> None:
    page = _parse(folder / "index.html")
    imgs = [attrs for tag, attrs in page.tags if tag == "img"]
    plots = list((folder / "plots").iterdir())
    assert len(imgs) == len(plots)
    embedded = set()
    for attrs in imgs:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        Image.open(io.BytesIO(data)).verify()
        embedded.add(data)
    assert embedded == {p.read_bytes() for p in plots}
    for tag, attrs in page.tags:
        assert tag not in ("script", "iframe", "object", "embed", "link"), tag
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"\s*(https?:)?//", value), (tag, key, value[:80])
    style = "".join(page.styles)
    assert not re.search(r"url\(|@import|https?://", style)
    raw = (folder / "index.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*https?://", raw)


def test_html_order_summary_findings_then_unhealthy_blocks_first(folder: Path) -> None:
    raw = (folder / "index.html").read_text()
    data = json.loads((folder / "report.json").read_text())
    assert raw.index('id="summary"') < raw.index('id="findings"') < raw.index('id="blocks"')
    assert raw.index('id="blocks"') < raw.index('id="overlays"') < raw.index('id="details"')
    rank = {"fail": 0, "warn": 1, "ok": 2}
    expected = sorted(range(1, len(data["blocks"]) + 1),
                      key=lambda i: (rank[data["blocks"][i - 1]["status"]], i))
    details = raw[raw.index('id="details"'):]
    found = [int(m) for m in re.findall(r'<section class="block \w+" id="b(\d\d)"', details)]
    assert found == expected
    # every finding's message is on the page
    text = html.unescape(raw)
    for b in data["blocks"]:
        for f in b["findings"]:
            assert f["message"] in text and f["remedy"] in text


def test_script_in_block_name_is_escaped(folder: Path) -> None:
    raw = (folder / "index.html").read_text()
    assert "<script" not in raw
    assert html.escape(SCRIPT_NAME) in raw
    page = _parse(folder / "index.html")
    assert not [t for t, _ in page.tags if t == "script"]
    assert SCRIPT_NAME in "".join(page.text)
    md = (folder / "report.md").read_text()
    assert "<script" not in md and "&lt;script&gt;" in md


def test_markdown_links_resolve(folder: Path) -> None:
    md = (folder / "report.md").read_text()
    targets = re.findall(r"(?<!\\)\]\(([^)\s]+)\)", md)
    files = [t for t in targets if not t.startswith("#")]
    assert len(files) == len(list((folder / "plots").iterdir()))
    assert all(not re.match(r"[a-z]+://", t) and not t.startswith("/") for t in files)
    assert any(t.startswith("#") for t in targets)
    _check_markdown_links(folder)


def test_odd_block_names_render(folder: Path, tmp_path: Path, runner: CliRunner) -> None:
    """Names with mathtext, table pipes, Markdown and HTML in them, and very long ones."""
    data = json.loads((folder / "report.json").read_text())
    odd = ["$\\frac{1}{$ | `x` *y* [z](http://evil.example) & </td>", "a" * 300]
    for block, name in zip(data["blocks"], odd, strict=False):
        old = block["name"]
        block["name"] = name
        for f in block["findings"]:
            f["block"] = name
            f["message"] = f["message"].replace(old, name)
    saved = tmp_path / "odd.json"
    saved.write_text(json.dumps(data))
    out = tmp_path / "odd"
    r = runner.invoke(app, ["report", "--from-json", str(saved), "--out", str(out)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    raw = (out / "index.html").read_text()
    assert html.escape(odd[0]) in raw
    page = _parse(out / "index.html")
    assert not [a for _, a in page.tags for k in ("href", "src") if "evil" in (a.get(k) or "")]
    md = (out / "report.md").read_text()
    assert not re.search(r"(?<!\\)\]\(http", md) and "\\|" in md
    _check_markdown_links(out)


def _check_markdown_links(folder: Path) -> None:
    md = (folder / "report.md").read_text()
    targets = re.findall(r"(?<!\\)\]\(([^)\s]+)\)", md)
    for t in targets:
        if t.startswith("#"):
            assert f'<a id="{t[1:]}"></a>' in md, t
        else:
            assert (folder / t).is_file(), t
    for table in re.findall(r"((?:^\|.*\|$\n?)+)", md, re.M):
        rows = table.strip().splitlines()
        widths = {len(re.split(r"(?<!\\)\|", r)) for r in rows}
        assert len(widths) == 1, rows[:3]


def test_md_escape() -> None:
    from coordatt_diag.reports.markdown_report import md_escape

    assert md_escape("a|b") == "a\\|b"
    assert md_escape("<img src=x>") == "&lt;img src=x&gt;"
    assert md_escape("conv_h*2 [x](y)") == "conv\\_h\\*2 \\[x\\](y)"
    assert md_escape("line\nbreak") == "line break"
    assert md_escape("a & b") == "a &amp; b"


# ---------------------------------------------------------------------------------------------
# Same pages from --from-json


def _without_overlay_note(text: str) -> str:
    return re.sub(r'<p class="note" id="overlay-note">.*?</p>', "", text)


def test_from_json_gives_the_same_pages(inputs: dict[str, Path], tmp_path: Path,
                                        runner: CliRunner) -> None:
    saved = tmp_path / "inspect.json"
    common = [str(inputs["model"]), "--trust", "--images", str(inputs["images"]), "--imgsz",
              IMGSZ, "--batch-size", "2"]
    r = runner.invoke(app, ["inspect", *common, "--json", str(saved)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    fresh = tmp_path / "fresh"
    assert _run(inputs, fresh, overlays="0").exit_code == 0
    again = tmp_path / "again"
    r = runner.invoke(app, ["report", "--from-json", str(saved), "--out", str(again)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    a, b = (fresh / "index.html").read_text(), (again / "index.html").read_text()
    assert "not available with --from-json" in b
    assert _without_overlay_note(a) == _without_overlay_note(b)
    assert json.loads((fresh / "report.json").read_text()) == json.loads(saved.read_text())
    assert (fresh / "report.json").read_text() == (again / "report.json").read_text()
    md_a, md_b = (fresh / "report.md").read_text(), (again / "report.md").read_text()
    strip = re.compile(r"## Overlays\n\n\*.*?\*\n")
    assert strip.sub("", md_a) == strip.sub("", md_b)
    assert sorted(p.name for p in (fresh / "plots").iterdir()) == \
        sorted(p.name for p in (again / "plots").iterdir())


def test_from_json_blocks_filter(folder: Path, tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "one"
    r = runner.invoke(app, ["report", "--from-json", str(folder / "report.json"), "--blocks",
                            r"^cbam", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    assert [b["name"] for b in data["blocks"]] == ["cbam.att"]
    assert data["summary"]["blocks"] == 1


@pytest.mark.parametrize("args", [
    ["--from-json", "{json}", "{model}"],  # both a checkpoint and --from-json
    ["--from-json", "{json}", "--images", "{images}"],  # input options do not apply
    ["--from-json", "{json}", "--blocks", "nothing-matches"],
    ["{model}", "--trust", "--format", "bmp"],
    ["{model}", "--trust", "--overlays", "-1"],
    ["{model}", "--trust", "--labels", "{json}"],  # --labels without --effect
    ["--from-json", "{json}", "--effect"],  # a saved report is rendered, not measured again
    [],  # neither
])
def test_usage_errors(args: list[str], folder: Path, inputs: dict[str, Path], tmp_path: Path,
                      runner: CliRunner) -> None:
    subst = {"{json}": str(folder / "report.json"), "{model}": str(inputs["model"]),
             "{images}": str(inputs["images"])}
    out = tmp_path / "out"
    r = runner.invoke(app, ["report", *[subst.get(a, a) for a in args], "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert not out.exists()


def test_from_json_not_a_report(tmp_path: Path, runner: CliRunner) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    r = runner.invoke(app, ["report", "--from-json", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 3 and "not a coordatt-diag report" in r.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Writing the folder


def test_refuses_non_report_folder_unless_forced(folder: Path, tmp_path: Path,
                                                 runner: CliRunner) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["report", "--from-json", str(folder / "report.json"), "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--force" in r.output
    assert (out / "notes.txt").read_text() == "mine"
    r = runner.invoke(app, [*args, "--force"])
    assert r.exit_code == 0, r.output
    assert not (out / "notes.txt").exists() and (out / "index.html").is_file()
    # a previous report is replaced without --force
    (out / "index.html").write_text("old")
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "index.html").read_text() != "old"
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temp or old folder left
    # a file, or the current folder, is refused even with --force
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["report", "--from-json", str(folder / "report.json"), "--out",
                            str(tmp_path / "file"), "--force"])
    assert r.exit_code == 2


def test_failed_render_leaves_no_folder(folder: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from coordatt_diag.reports import folder as folder_mod
    from coordatt_diag.reports import html_report
    from coordatt_diag.reports.report_command import read_saved_report

    report = read_saved_report(folder / "report.json")

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(html_report, "render_html", broken)
    with pytest.raises(RuntimeError):
        folder_mod.write_report_folder(report, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    # an existing report stays as it was
    good = tmp_path / "good"
    monkeypatch.undo()
    folder_mod.write_report_folder(report, good)
    before = (good / "index.html").read_bytes()
    monkeypatch.setattr(html_report, "render_html", broken)
    with pytest.raises(RuntimeError):
        folder_mod.write_report_folder(report, good)
    assert (good / "index.html").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["good"]


def test_svg_format(folder: Path, tmp_path: Path, runner: CliRunner) -> None:
    out = tmp_path / "svg"
    r = runner.invoke(app, ["report", "--from-json", str(folder / "report.json"), "--format",
                            "svg", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    svgs = list((out / "plots").glob("*.svg"))
    assert svgs and not list((out / "plots").glob("*.png"))
    for svg in svgs:
        text = svg.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
    page = _parse(out / "index.html")
    srcs = [a["src"] or "" for t, a in page.tags if t == "img"]
    assert len(srcs) == len(svgs)
    assert all(s.startswith("data:image/svg+xml;base64,") for s in srcs)
    assert "](plots/" in (out / "report.md").read_text()


def test_help_imports_neither_torch_nor_matplotlib() -> None:
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom coordatt_diag.cli import app\n"
            "r = CliRunner().invoke(app, ['report', '--help'])\nassert r.exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Overlays


def test_overlay_maps_match_a_hand_computation() -> None:
    from coordatt_diag.runs.inspect import find_blocks
    from coordatt_diag.runs.overlays import collect_overlays

    model = _model()
    x = torch.rand(3, 3, 24, 20)
    specs = find_blocks(model, x[:2])
    maps = collect_overlays(model, specs, x)
    assert set(maps) == {"coord.att", "cbam.att", SCRIPT_NAME}  # SE has no positional mask
    with torch.no_grad():
        h = model.stem(x)
        inner = model.coord
        att_in = inner.dw(inner.expand(h))
        ref = inner.att.reference_masks(att_in)
        full = (ref["a_h"] * ref["a_w"]).mean(1)  # (B, H, W): a_h (x) a_w, channel mean
        assert maps["coord.att"].source == "a_h ⊗ a_w"
        got = np.stack(maps["coord.att"].maps)
        np.testing.assert_allclose(got, full.numpy(), rtol=1e-5, atol=1e-6)
        h2 = model.coord(h)
        cb = model.cbam
        spatial = cb.att.reference_masks(cb.dw(cb.expand(h2)))["spatial"][:, 0]
        assert maps["cbam.att"].source == "spatial"
        np.testing.assert_allclose(np.stack(maps["cbam.att"].maps), spatial.numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_overlay_images_are_the_inputs_denormalised(inputs: dict[str, Path]) -> None:
    from coordatt_diag.load.inputs import decode_image
    from coordatt_diag.runs.overlays import display_images

    path = next(inputs["images"].glob("*.png"))
    unit = decode_image(path, 3, 32, "unit")
    normed = torch.from_numpy(decode_image(path, 3, 32, "imagenet"))[None]
    shown, how = display_images(normed, "images", "imagenet")
    assert "ImageNet" in how
    np.testing.assert_allclose(shown[0], unit.transpose(1, 2, 0), atol=1e-5)
    shown_unit, _ = display_images(torch.from_numpy(unit)[None], "images", "unit")
    np.testing.assert_allclose(shown_unit[0], unit.transpose(1, 2, 0), atol=1e-6)


def test_overlays_show_the_first_samples_of_the_run(inputs: dict[str, Path]) -> None:
    from coordatt_diag.load.inputs import decode_image
    from coordatt_diag.runs.inspect import InspectOptions
    from coordatt_diag.runs.overlays import inspect_with_overlays

    opts = InspectOptions(trust=True, images=inputs["images"], imgsz=32, batch_size=2)
    report, overlays = inspect_with_overlays(inputs["model"], opts, overlays=3)
    assert overlays is not None and len(overlays.images) == 3
    files = sorted(inputs["images"].glob("*.png"))
    for shown, path in zip(overlays.images, files, strict=False):
        np.testing.assert_allclose(shown, decode_image(path, 3, 32, "unit").transpose(1, 2, 0),
                                   atol=1e-6)
    assert report.inputs.samples == 5  # the statistics still saw every sample
    # the run is exactly inspect's (inspect_with_overlays repeats its steps)
    from coordatt_diag.runs.inspect import inspect_checkpoint

    assert report.to_dict() == inspect_checkpoint(inputs["model"], opts).to_dict()
    for ov in overlays.blocks.values():
        assert len(ov.maps) == 3


# ---------------------------------------------------------------------------------------------
# The mask effect (--effect)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _effect_cells(block: dict[str, Any]) -> list[list[str]]:
    """The rows the pages should show for a block, formatted here from the JSON."""
    rows = []
    for label, key in (("positional mean", "positional"), ("constant", "constant")):
        ab = block["effect"][key]
        if ab is None:
            continue
        drop = ab["accuracy_drop"]
        rows.append([label, f"{ab['rel_l2']:.1%}",
                     "-" if ab["top1_agreement"] is None else f"{ab['top1_agreement']:.1%}",
                     # an accuracy drop shown as the change it is: negative
                     "-" if drop is None else f"{-drop:+.1%}"])
    return rows


def _html_effect_rows(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    section = re.search(r'<section id="effect">(.*?)</section>', text, re.S)
    assert section is not None
    rows = re.findall(r"<tr>(.*?)</tr>", section.group(1).split("<tbody>", 1)[1], re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                          r, re.S)] for r in rows]


def test_pages_show_the_mask_effect(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "diag"
    result = _run(inputs, out, "--effect", overlays="2")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    blocks = {b["name"]: b for b in data["blocks"]}
    assert all(b["effect"] is not None for b in blocks.values())
    assert blocks["se.att"]["effect"]["positional"] is None  # no positions: one row
    # HTML: one row per block and replacement, in the order of the block table
    text = (out / "index.html").read_text(encoding="utf-8")
    assert '<a href="#effect">mask effect</a>' in text
    assert "<script>" not in text
    rank = {"fail": 0, "warn": 1, "ok": 2}  # the block table's order: unhealthy blocks first
    order = sorted(blocks, key=lambda n: rank[blocks[n]["status"]])
    expected = []
    for name in order:
        for k, cells in enumerate(_effect_cells(blocks[name])):
            expected.append([name if k == 0 else "", *cells])
    assert _html_effect_rows(out / "index.html") == expected
    assert text.index('id="effect"') < text.index('id="overlays"')
    # Markdown: the same table, its links resolve
    md = (out / "report.md").read_text()
    assert md.index("## Mask effect") < md.index("## Overlays")
    table = md.split("## Mask effect", 1)[1].split("## Overlays", 1)[0]
    for name in order:
        for cells in _effect_cells(blocks[name]):
            assert " | ".join(cells) in table, (name, cells)
    assert "&lt;script&gt;" in table
    _check_markdown_links(out)


def test_pages_without_effect_have_no_effect_section(folder: Path) -> None:
    assert 'id="effect"' not in (folder / "index.html").read_text(encoding="utf-8")
    assert "Mask effect" not in (folder / "report.md").read_text()


def test_effect_with_labels_and_from_json(tmp_path: Path, runner: CliRunner) -> None:
    common = [str(EXAMPLES / "digits_collapsed.pt"), "--model", "coordatt_diag.demo:digits_net",
              "--tensors", str(EXAMPLES / "digits_samples.pt"), "--batch-size", "64", "--effect",
              "--labels", str(EXAMPLES / "digits_labels.pt")]
    saved = tmp_path / "inspect.json"
    r = runner.invoke(app, ["inspect", *common, "--json", str(saved)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    fresh = tmp_path / "fresh"
    r = runner.invoke(app, ["report", *common, "--overlays", "0", "--out", str(fresh)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    again = tmp_path / "again"
    r = runner.invoke(app, ["report", "--from-json", str(saved), "--out", str(again)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads((fresh / "report.json").read_text()) == json.loads(saved.read_text())
    data = json.loads(saved.read_text())
    rows = _html_effect_rows(again / "index.html")
    assert len(rows) == sum(len(_effect_cells(b)) for b in data["blocks"])
    assert all(re.fullmatch(r"[+-]\d+\.\d%", row[-1]) for row in rows)  # accuracy change shown
    accuracy = data["blocks"][0]["effect"]["accuracy"]
    assert f"accuracy without replacement {accuracy:.1%}" in (again / "report.md").read_text()
    a, b = (fresh / "index.html").read_text(), (again / "index.html").read_text()
    assert _without_overlay_note(a) == _without_overlay_note(b)
    strip = re.compile(r"## Overlays\n\n\*.*?\*\n")
    md_a, md_b = (fresh / "report.md").read_text(), (again / "report.md").read_text()
    assert strip.sub("", md_a) == strip.sub("", md_b)


# ---------------------------------------------------------------------------------------------
# The page in a real browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium where it is installed (Debian: `apt-get install -y chromium`); the test command
    does not install it (docs/development.md)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return found


def test_page_renders_in_headless_chromium(folder: Path, chromium: str, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,2000", (folder / "index.html").resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    assert grey.std() > 20, "the screenshot is blank"
    assert (grey < 200).mean() > 0.03  # text, tables and figures, not a white page
    # the figures are drawn: the viridis-coloured overlay grid and bars leave coloured pixels
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    colour = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
    assert (colour > 60).mean() > 0.005


def test_epoch_label_names_stripped_final_weights() -> None:
    from coordatt_diag.results import CheckpointInfo

    assert CheckpointInfo(path="a.pt", sha256=None, format="ultralytics", epoch=7).epoch_label \
        == "epoch 7"
    assert CheckpointInfo(path="a.pt", sha256=None, format="ultralytics", epoch=-1).epoch_label \
        == "final weights"
    assert CheckpointInfo(path="a.pt", sha256=None, format="module").epoch_label is None
