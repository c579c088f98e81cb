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


def _root_modules() -> list[Path]:
    package = Path(__file__).resolve().parents[2] / "hloscope"
    return sorted(p for p in package.rglob("*.py") if "programs" not in p.relative_to(package).parts)


def test_hloscope_root_names_no_reftrain_import():
    """Only hloscope/programs/ knows reftrain (DESIGN.md): not even a deferred import elsewhere."""
    import ast

    offenders = []
    for path in _root_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "reftrain"]
    assert len(_root_modules()) > 20 and offenders == []


def test_importing_every_root_module_loads_no_trainer():
    modules = [".".join(p.relative_to(Path(__file__).resolve().parents[2]).with_suffix("").parts) for p in _root_modules()]
    modules = [m.removesuffix(".__init__") for m in modules if not m.endswith(("__main__", "_worker"))]
    loaded = _loaded_after("\n".join(f"import {m}" for m in modules))
    assert "reftrain" not in loaded and "flax" not in loaded and "optax" not in loaded, loaded
