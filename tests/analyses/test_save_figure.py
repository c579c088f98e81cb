"""analyses/_common.save_figure: the PNG is tried twice (Chrome may start late on a loaded
machine); when both tries fail it is skipped with one line, and the HTML is still written."""

from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

from _common import save_figure  # noqa: E402


class _Flaky(go.Figure):
    def __init__(self, failures: int):
        super().__init__(go.Scatter(x=[0, 1], y=[0, 1]))
        self._failures = failures

    def to_image(self, **kwargs):
        if self._failures:
            self._failures -= 1
            raise RuntimeError("Chrome did not start in time")
        return b"\x89PNG\r\n\x1a\nfake"


def test_a_second_try_writes_the_png(tmp_path, capsys):
    written = save_figure(_Flaky(failures=1), tmp_path, "f")
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG") and "png" in written
    assert "skipped" not in capsys.readouterr().out


def test_two_failures_skip_the_png_with_one_line(tmp_path, capsys):
    written = save_figure(_Flaky(failures=2), tmp_path, "f")
    out = capsys.readouterr().out
    assert not (tmp_path / "f.png").exists() and "png" not in written
    assert (tmp_path / "f.html").stat().st_size > 0
    assert out.count("\n") == 1 and "f.png skipped (RuntimeError: Chrome did not start in time)" in out
