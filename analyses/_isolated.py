"""One benchmark case per process, so that `peak_bytes_in_use` (which only grows within a
process) is that case's alone. Imports nothing heavy: the GPU machine may lack plotly."""

from __future__ import annotations

import json
import subprocess
import sys


def run_isolated(argv: list[str], case: dict, *, timeout: float, env: dict | None = None) -> dict:
    """Runs `python argv...` and returns the JSON object on its last stdout line, or `case`
    with an "error" (the last stderr line, or the timeout) when it did not produce one."""
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        # The exception line, not jax's "For simplicity, JAX has removed ..." footer after it.
        raised = [line for line in lines if "Error: " in line or "Exception: " in line]
        tail = raised or lines
        return {**case, "error": tail[-1][:300] if tail else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])
