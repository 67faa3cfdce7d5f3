"""``vigil report --html``: a self-contained page, looked at in a real headless browser.

The browser tests need Debian's ``chromium`` (``apt-get install -y chromium``); they are
skipped, saying so, only when no Chromium binary can be found.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from llmvigil.adapters.local import LocalStore
from llmvigil.core.model import Alert, Span
from llmvigil.core.report import build_report
from llmvigil.core.report.html import render_html
from test_report import NOW, T0, make_traffic, vigil_report, write_store

S = 10**9
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records: list[Any] = make_traffic()
    records += [
        Alert(id="hostile", rule="x<y>", severity="critical", message=HOSTILE,
              time_ns=T0 + 5 * 3600 * S),
        Span(id="hostile-span", trace_id="h", start_ns=T0 + 3600 * S, end_ns=T0 + 3601 * S,
             feature="<b>bold</b> & co", status="ok"),
    ]
    return write_store(tmp_path_factory.mktemp("html") / "vigil.db", records)


@pytest.fixture(scope="module")
def page(store: Path) -> str:
    return render_html(build_report(store, now_ns=NOW))


def test_the_page_is_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    for needle in ("<script", "<link", " src=", "url(", "@import", "https://"):
        assert needle not in lowered, needle
    # The only URL is the SVG namespace, which is a name, never fetched.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}


def test_record_text_is_escaped(page: str) -> None:
    assert HOSTILE not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    assert "x&lt;y&gt;" in page


def test_every_plot_is_well_formed_svg(page: str) -> None:
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    labels = [ElementTree.fromstring(svg).get("aria-label") for svg in svgs]
    assert labels == [
        "request latency percentiles over time", "spend per hour", "top users by cost",
        "satisfaction rate over time", "task completion rate over time",
    ]
    latency = ElementTree.fromstring(svgs[0])
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(latency.findall("s:polyline", ns)) >= 5  # p50, p95, p99, TTFT p50 and p95
    assert len(ElementTree.fromstring(svgs[1]).findall("s:rect", ns)) > 50  # hourly bars
    assert len(ElementTree.fromstring(svgs[2]).findall("s:rect", ns)) == 10  # top 10 users


def test_an_empty_store_gives_a_page_that_says_so(tmp_path: Path) -> None:
    LocalStore(tmp_path / "empty.db").close()
    page = render_html(build_report(tmp_path / "empty.db"))
    assert "No records in this range." in page and "<svg" not in page


def test_vigil_report_html_writes_the_page(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = vigil_report("--store", str(store), "--html", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    assert out.read_text(encoding="utf-8") == render_html(build_report(store))


# ---------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium binary found: install Debian's chromium "
                "(apt-get install -y chromium) to look at the report page in a browser")


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG: (width, height, rows of RGB bytes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prior = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prior, strict=True))
        elif kind == 3:
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + ((left + prior[x]) >> 1)) & 0xFF
        elif kind == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b = prior[x]
                c = prior[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + pred) & 0xFF
        prior = line
        rows.append(bytes(line) if bpp == 3 else bytes(
            v for i, v in enumerate(line) if i % 4 != 3))
    return width, height, rows


def _near(rgb: tuple[int, int, int], target: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(rgb, target, strict=True))


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line or "Uncaught" in line or "Failed to load" in line]


def test_the_console_check_sees_a_script_error(tmp_path: Path) -> None:
    """The control for the check below: a page with a failing script is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    run = _run_chromium(tmp_path, "--dump-dom", bad.as_uri())
    assert any("undefinedFunction" in line for line in _console_errors(run.stderr))


def test_the_page_renders_in_a_headless_browser(store: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    done = vigil_report("--store", str(store), "--html", str(html), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shot = tmp_path / "shot.png"
    run = _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
                        html.as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    assert _console_errors(run.stderr) == []

    width, height, rows = read_png(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    pixels = [tuple(row[i:i + 3]) for row in rows[::7] for i in range(0, len(row), 21)]
    assert len(set(pixels)) > 40  # not a blank (or single-colour) page
    luminance = [0.3 * r + 0.59 * g + 0.11 * b for r, g, b in pixels]
    mean = sum(luminance) / len(luminance)
    assert sum((v - mean) ** 2 for v in luminance) / len(luminance) > 100
    # The plots were drawn: the p50 line's blue, the bars' blue, the users' green,
    # and the dark header band at the top.
    counts = {name: sum(_near(p, rgb) for p in pixels)  # type: ignore[arg-type]
              for name, rgb in (("blue", (37, 99, 235)), ("green", (5, 150, 105)),
                                ("red", (220, 38, 38)))}
    assert all(n > 10 for n in counts.values()), counts
    assert _near(tuple(rows[20][0:3]), (31, 41, 51), 8)  # type: ignore[arg-type]


def test_the_browser_dom_holds_the_plots_and_tables(store: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text(render_html(build_report(store, now_ns=NOW)), encoding="utf-8")
    run = _run_chromium(tmp_path, "--dump-dom", html.as_uri())
    dom = run.stdout
    assert dom.count("<svg") == 5, run.stderr[-2000:]
    assert dom.count("<polyline") >= 7 and dom.count("<table") >= 4
    assert "Requests and latency" in dom and "extract_invoice_dates" in dom
    assert "&lt;script&gt;" in dom and "<script>alert" not in dom
