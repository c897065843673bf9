"""A page as a person sees it: rendered by headless Chromium (Debian's ``chromium`` package,
which ``make test`` installs when it can), its plots located in the laid-out page and cut
out of a screenshot, each checked for ink in the report's colours.

Two runs of the same browser on the same page and window: one dumps the DOM after a probe
script has written every plot's box into it, one takes the screenshot.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from protege.report import PALETTE

WIDTH = 1100
PROBE = """<script>
const plots = {};
for (const f of document.querySelectorAll("figure.plot")) {
  const r = f.getBoundingClientRect();
  const svg = f.querySelector("svg");
  plots[f.id.replace("plot-", "")] = {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height,
    marks: svg ? svg.querySelectorAll("path, use").length : 0};
}
document.body.setAttribute("data-probe", JSON.stringify({plots, height: document.documentElement.scrollHeight}));
</script>"""


@dataclass(frozen=True)
class Plot:
    box: tuple[int, int, int, int]
    marks: int  # SVG paths in it, as the browser parsed them
    ink: float  # share of its pixels that are not background
    colours: int  # how many of the report's palette colours appear in it (at least 20 pixels each)


@dataclass(frozen=True)
class Seen:
    plots: dict[str, Plot]
    screenshot: Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "no Chromium: the report is tested in a real browser. `make test` installs Debian's chromium "
        "when it runs as root; else: apt-get install chromium"
    )


def _run(browser: str, *args: str) -> str:
    flags = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")
    done = subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def look(browser: str, page: Path, scratch: Path) -> Seen:
    probe = scratch / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _run(browser, f"--window-size={WIDTH},1000", "--dump-dom", probe.resolve().as_uri())
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the probe did not run: " + dom[:500]
    probed = json.loads(html.unescape(found[1]))
    shot = scratch / "screenshot.png"
    height = int(probed["height"]) + 20
    _run(browser, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", page.resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    palette = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in PALETTE.values()]
    plots = {}
    for name, p in probed["plots"].items():
        x, y, w, h = (round(p[k]) for k in ("x", "y", "w", "h"))
        crop = pixels[y : y + h, x : x + w]
        assert crop.size, f"plot {name} is outside the screenshot ({x},{y},{w},{h})"
        ink = float((crop.min(axis=2) < 235).mean())
        colours = sum(int((np.abs(crop - np.array(c)).max(axis=2) < 24).sum() >= 20) for c in palette)
        plots[name] = Plot((x, y, w, h), int(p["marks"]), ink, colours)
    return Seen(plots, shot)


def visit(browser: str, url: str, scratch: Path, *, height: int = 700) -> tuple[str, np.ndarray]:
    """A live page (a server's, not a file) as Chromium lays it out: its DOM after loading, and
    its screenshot's pixels (RGB)."""
    dom = _run(browser, f"--window-size={WIDTH},{height}", "--dump-dom", url)
    shot = scratch / "visit.png"
    _run(browser, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", url)
    return dom, np.asarray(Image.open(shot).convert("RGB")).astype(int)


def has_colour(pixels: np.ndarray, colour: str, at_least: int = 20) -> bool:
    """Whether at least ``at_least`` pixels are within a few levels of ``colour`` (#rrggbb)."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=2) < 24).sum()) >= at_least
