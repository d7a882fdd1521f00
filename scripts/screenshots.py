"""Screenshots of the report page at a desktop and a narrow width, for docs/img/.

Writes the report of the collapsed demo model (`coordatt-diag report`) into a temporary folder
and photographs its index.html with headless Chromium (Debian: `apt-get install -y chromium`)
at 1400 and 700 px wide:

    python scripts/screenshots.py                # docs/img/report-1400.png, report-700.png
    python scripts/screenshots.py --out /tmp/shots --height 2400

`layout_check(page, width)` is also what the browser test uses: it loads the page with a small
script appended (in a copy; the report itself has none) that measures the layout and writes the
result into the DOM, which Chromium's --dump-dom prints.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (1400, 700)

#: Appended to a copy of the page: for each table, its right edge, and whether it sits in a
#: box that scrolls sideways; the page's own scroll width; written as JSON into the DOM.
_PROBE = """
<script>
(function () {
  var vw = document.documentElement.clientWidth;
  var tables = Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
    var box = t.parentElement, scrolls = false;
    while (box && box !== document.body) {
      var ov = getComputedStyle(box).overflowX;
      if (ov === "auto" || ov === "scroll") { scrolls = true; break; }
      box = box.parentElement;
    }
    var r = t.getBoundingClientRect();
    var holder = scrolls ? box.getBoundingClientRect() : r;
    return {cls: t.className, right: r.right, left: r.left, scrolls: scrolls,
            boxRight: holder.right, visible: r.width > 0,
            cut: scrolls && box.scrollWidth > box.clientWidth + 1};
  });
  var out = document.createElement("pre");
  out.id = "layout-probe";
  out.textContent = JSON.stringify({viewport: vw,
    pageWidth: document.documentElement.scrollWidth, tables: tables});
  document.body.appendChild(out);
})();
</script>
"""


def find_chromium() -> str | None:
    """The Chromium binary (Debian's `chromium`, or `chromium-browser`), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_args(chromium: str, profile: Path, width: int, height: int) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--window-size={width},{height}"]


def screenshot(page: Path, shot: Path, width: int, height: int, chromium: str) -> None:
    """Photograph `page` in a `width` x `height` window into the PNG `shot`."""
    with tempfile.TemporaryDirectory(prefix="coordatt-shot-") as profile:
        cmd = _chromium_args(chromium, Path(profile), width, height) + [
            f"--screenshot={shot}", page.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if not shot.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {done.stderr[-1500:]}")


def layout_check(page: Path, width: int, chromium: str, height: int = 1200) -> dict:
    """The layout of `page` at `width`: the probe's JSON (see `_PROBE`)."""
    with tempfile.TemporaryDirectory(prefix="coordatt-layout-") as tmp:
        probe = Path(tmp) / "index.html"
        html = page.read_text(encoding="utf-8")
        probe.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        cmd = _chromium_args(chromium, Path(tmp) / "profile", width, height) + [
            "--dump-dom", probe.as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="layout-probe">(.*?)</pre>', done.stdout, re.S)
    if not m:
        raise RuntimeError(f"the layout probe did not run: {done.stderr[-1500:]}")
    import html as html_mod

    return dict(json.loads(html_mod.unescape(m.group(1))))


def make_demo_report(out: Path) -> Path:
    """The report folder of the collapsed demo model; returns its index.html."""
    cmd = [sys.executable, "-m", "coordatt_diag", "report", "examples/digits_collapsed.pt",
           "--model", "coordatt_diag.demo:digits_net", "--tensors",
           "examples/digits_samples.pt", "--out", str(out), "--force"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out / "index.html"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="coordatt-report-") as tmp:
        page = make_demo_report(Path(tmp) / "report")
        for width in WIDTHS:
            shot = args.out / f"report-{width}.png"
            screenshot(page, shot, width, args.height, chromium)
            print(f"wrote {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
