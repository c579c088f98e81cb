"""Runs an analyses/ script as a user would (a subprocess, --quick, into a temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_analysis(name: str, out_dir: Path, *args: str, timeout: float = 300) -> tuple[dict, str]:
    """Runs `python analyses/NAME.py --quick --out-dir OUT ARGS`; returns (its JSON, its stdout).

    Asserts it exited 0 and wrote NAME.json and NAME.html, and NAME.png where a Chrome exists.
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(REPO / "analyses" / f"{name}.py"), "--quick", "--out-dir", str(out_dir), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out_dir / f"{name}.html").stat().st_size > 0
    if shutil.which("chromium") or shutil.which("google-chrome"):
        assert (out_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out_dir.glob("*.tmp")), "a temporary file was left behind"
    return json.loads((out_dir / f"{name}.json").read_text()), done.stdout


@pytest.fixture
def analysis(tmp_path):
    return lambda name, *args, **kw: run_analysis(name, tmp_path, *args, **kw)
