"""The HTML report: what it holds, and that it renders (headless Chromium, where installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hloscope import cli
from hloscope.html_report import report_html

HLO = """HloModule step, entry_computation_layout={(f32[256,512]{1,0}, f32[128,256]{1,0})->f32[128,256]{1,0}}

ENTRY %main (w: f32[256,512], x: f32[128,256]) -> f32[128,256] {
  %w = f32[256,512]{1,0} parameter(0)
  %x = f32[128,256]{1,0} parameter(1)
  %h = f32[128,512]{1,0} dot(f32[128,256]{1,0} %x, f32[256,512]{1,0} %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/dot" source_file="model.py" source_line=12}
  %t = f32[128,512]{1,0} tanh(f32[128,512]{1,0} %h), metadata={op_name="jit(step)/tanh" source_file="model.py" source_line=13}
  ROOT %y = f32[128,256]{1,0} dot(f32[128,512]{1,0} %t, f32[256,512]{1,0} %w), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}
"""


@pytest.fixture
def profiles(tmp_path: Path) -> list[Path]:
    paths = []
    for name, text in (("a", HLO), ("b", HLO.replace("128", "64"))):
        (tmp_path / f"{name}.hlo").write_text(text)
        assert cli.main(["profile", "--hlo", str(tmp_path / f"{name}.hlo"), "--json", str(tmp_path / f"{name}.json")]) == 0
        paths.append(tmp_path / f"{name}.json")
    return paths


def test_report_holds_title_curves_peak_budget_buffers_and_sources(profiles):
    profile = json.loads(profiles[0].read_text())
    page = report_html([profile], budget=300_000)
    assert "<title>hloscope: a.hlo</title>" in page
    for text in ("live_peak: bytes live", "prealloc_accumulated: running sum", "budget 0.00 GiB", "peak ",
                 "Buffers live at the peak", "model.py:13", "does not fit", "versions: "):
        assert text in page, text
    # The hover of every curve point names its instruction.
    assert '"customdata"' in page and "%{customdata[4]}" in page


def test_diff_overlays_both_profiles(profiles, tmp_path):
    assert cli.main(["diff", str(profiles[0]), str(profiles[1]), "--html", str(tmp_path / "diff.html")]) == 0
    page = (tmp_path / "diff.html").read_text()
    assert "a.hlo vs b.hlo" in page and page.count("Buffers live at the peak:") == 2


def test_report_renders_in_headless_chromium(profiles, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (CI installs Debian's)")
    page = tmp_path / "report.html"
    assert cli.main(["diff", str(profiles[0]), str(profiles[1]), "--html", str(page)]) == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    # plotly.js ran: each figure became an SVG with its traces drawn.
    assert dom.stdout.count('class="main-svg"') >= 4, dom.stderr[-2000:]
    assert "scatterlayer" in dom.stdout and "barlayer" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000  # a page with drawn figures, not a blank one
