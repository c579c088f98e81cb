"""hloscope's core stands alone: no reftrain, flax, optax (nor jax for --hlo) and no native noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("reftrain", "flax", "optax", "jax", "jaxlib")
SMALL_HLO = """HloModule small, entry_computation_layout={(f32[1024]{0})->f32[1024]{0}}

ENTRY %main (p: f32[1024]) -> f32[1024] {
  %p = f32[1024]{0} parameter(0)
  %e = f32[1024]{0} exponential(f32[1024]{0} %p)
  ROOT %a = f32[1024]{0} add(f32[1024]{0} %e, f32[1024]{0} %p)
}
"""


def _loaded_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_import_hloscope_loads_no_trainer_and_no_jax():
    assert _loaded_after("import hloscope, hloscope.testing") == []


def test_help_and_hlo_text_load_no_trainer_and_no_jax(tmp_path: Path):
    hlo = tmp_path / "small.hlo"
    hlo.write_text(SMALL_HLO)
    code = ("from hloscope import cli\n"
            f"assert cli.main(['profile', '--hlo', {str(hlo)!r}]) == 0\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass")
    assert _loaded_after(code) == []


def test_commands_print_nothing_but_their_own_lines_on_stderr(tmp_path: Path):
    hlo = tmp_path / "small.hlo"
    hlo.write_text(SMALL_HLO)
    for args in (["--help"], ["profile", "--hlo", str(hlo)], ["versions"], ["profile", "--hlo", "/no/such.hlo"]):
        result = subprocess.run([sys.executable, "-m", "hloscope", *args], capture_output=True, text=True, timeout=120)
        assert all(line.startswith("hloscope: ") for line in result.stderr.splitlines()), (args, result.stderr)
