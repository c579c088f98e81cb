"""hloscope's public API: profile anyone's JAX program for a target, and check it against a budget.

    import hloscope
    report = hloscope.profile("mymodel.steps:build", target="a100-80gb", devices=8,
                              mesh={"data": 2, "model": 4}, seq=32768)
    print(report.xla_total, report.fits("70GiB"))
    hloscope.check("mymodel.steps:build", target="a100-80gb", devices=8, budget="70GiB", seq=32768)
    hloscope.largest("mymodel.steps:build", "seq", target="a100-80gb", devices=8, budget="70GiB",
                     step=4096, up_to=1 << 20).value

A program is a builder, `build(mesh, **options) -> (fn, args)` (hloscope/programs/__init__.py);
it is imported, built, lowered and compiled in a worker process, so a crash, a hang or an
out-of-memory of the user's code ends only the worker and comes back as ProgramFailed.
"""

from __future__ import annotations

import inspect
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hloscope._files import atomic_write_text
from hloscope.binary_search import largest_multiple
from hloscope.profiling import READABLE_SCHEMAS, CompileFailed, judged_figure, profile_program
from hloscope.units import human_bytes, parse_size

Program = str | Callable[..., Any]


class ProgramFailed(Exception):
    """The program did not compile: its builder failed (import, exception, wrong return), or the
    worker crashed, hung past the timeout or ran out of memory. `status` is one of 'error',
    'crashed', 'timeout' or 'oom'; `log` holds the tail of what the worker printed."""

    def __init__(self, failure: CompileFailed) -> None:
        super().__init__(f"{failure.status}: {failure.error}")
        self.status, self.error, self.log = failure.status, failure.error, failure.log


class Profile:
    """What hloscope found about one program: figures (bytes per device), buffers, findings.

    `data` is the JSON document (docs/profile_json.md); the properties name its parts.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Reads a profile written by `write_json` or `hloscope profile --json`."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("schema") not in READABLE_SCHEMAS:
            found = data.get("schema") if isinstance(data, dict) else None
            raise ValueError(f"{path} is not a hloscope profile (schema {found!r})")
        return cls(data)

    @property
    def label(self) -> str:
        return self.data["label"]

    @property
    def xla_total(self) -> int | None:
        """XLA's memory_analysis(): argument + output + temp - alias bytes per device."""
        return self.data["figures"].get("xla_total")

    @property
    def live_peak(self) -> int:
        """hloscope's liveness simulation's peak, bytes per device."""
        return self.data["figures"]["live_peak"]

    @property
    def prealloc_accumulated(self) -> int:
        """The paper's Fig. 2 metric: what the instructions allocate, summed in schedule order."""
        return self.data["figures"]["prealloc_accumulated"]

    @property
    def peak_memory_in_bytes(self) -> int | None:
        """XLA's own peak, where the target reports one (GPU compiles); None otherwise."""
        return self.data["figures"].get("peak_memory_in_bytes")

    @property
    def memory_analysis(self) -> dict[str, int] | None:
        """XLA's memory_analysis() byte counts, as the compile returned them."""
        return self.data.get("memory_analysis")

    @property
    def layout_total(self) -> int | None:
        """hloscope's model of XLA's total from the optimized HLO's text alone: arguments,
        outputs and the temporaries laid out at offsets as XLA does (None without a schedule)."""
        return self.data["figures"].get("layout_total")

    @property
    def figure(self) -> tuple[str, int]:
        """(name, bytes) of the figure budgets are judged by: xla_total, else layout_total,
        else live_peak (hloscope.profiling.judged_figure)."""
        return judged_figure(self.data["figures"])

    @property
    def top_buffers(self) -> list[dict[str, Any]]:
        """The instructions that allocate the most, with shape, bytes and source line."""
        return self.data["top_buffers"]

    @property
    def live_at_peak(self) -> list[dict[str, Any]]:
        """The buffers live at live_peak, largest first, with shape, bytes and source line."""
        return self.data["live_at_peak"]

    @property
    def findings(self) -> list[dict[str, Any]]:
        """Offenders (e.g. a loop-invariant value stacked per iteration) with cause and remedy."""
        return self.data["findings"]

    @property
    def runtime_overhead(self) -> int:
        """Bytes the target's runtime holds in XLA's pool beyond the program's own (its
        workspaces: hloscope.targets.GPU_RUNTIME_OVERHEAD on GPU targets, 0 on cpu)."""
        return int((self.data.get("target") or {}).get("runtime_overhead_bytes") or 0)

    @property
    def needed(self) -> int:
        """What a device must hold to run it: `figure` plus `runtime_overhead`."""
        return self.figure[1] + self.runtime_overhead

    @property
    def runtime_note(self) -> str:
        """" + N runtime" where the target's runtime holds memory beyond the program, else ""."""
        return f" + {human_bytes(self.runtime_overhead)} runtime" if self.runtime_overhead else ""

    def fits(self, budget: int | float | str) -> bool:
        """True when `needed` (figure + runtime overhead) is at most `budget` (bytes, or a size
        such as "70GiB")."""
        return self.needed <= parse_size(budget)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1)

    def write_json(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    def write_html(self, path: str | Path, *, budget: int | float | str | None = None) -> None:
        """Writes the self-contained HTML report (hloscope/html_report.py)."""
        from hloscope.html_report import write_report

        write_report([self.data], path, budget=None if budget is None else parse_size(budget))

    def summary(self, *, top: int = 5, budget: int | float | str | None = None) -> str:
        """The terminal report (figures, findings, buffers) as plain text."""
        from rich.console import Console

        from hloscope.report import print_profile

        out = io.StringIO()
        print_profile(self.data, top=top, console=Console(file=out, width=160, color_system=None),
                      budget=None if budget is None else parse_size(budget))
        return out.getvalue()

    def __repr__(self) -> str:
        name, size = self.figure
        return f"<Profile {self.label}: {name} {human_bytes(size)}>"


class BudgetExceeded(Exception):
    """The program needs more memory per device than the budget; the message is the full report."""

    def __init__(self, profile: Profile, budget: int) -> None:
        self.profile, self.budget = profile, budget
        name, size = profile.figure
        self.figure, self.bytes = name, size
        headline = (f"{profile.label}: {name} {human_bytes(size)}{profile.runtime_note} per device exceeds the budget "
                    f"{human_bytes(budget)} by {human_bytes(profile.needed - budget)}")
        super().__init__(headline + "\n" + profile.summary(budget=budget))


def program_spec(program: Program) -> str:
    """Returns the importable "module:function" (or "file.py:function") of a builder.

    The worker imports the builder in a fresh process, so a callable must be defined at the
    top level of a module or script (not inside a function, not a lambda).
    """
    if isinstance(program, str):
        return program
    if not callable(program):
        raise TypeError(f"program must be a builder function or a 'module:function' string, got {type(program).__name__}")
    qualname = getattr(program, "__qualname__", "")
    module = getattr(program, "__module__", None)
    if not module or "<" in qualname or "." in qualname:
        raise ValueError(f"builder {qualname or program!r} must be a top-level function of a module "
                         "(the compile worker imports it in a fresh process)")
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if not main_file:
            raise ValueError(f"builder {qualname} is defined in an interactive session; define it in a file")
        return f"{Path(main_file).resolve()}:{qualname}"
    return f"{module}:{qualname}"


def _check_builder_signature(program: Program) -> None:
    if callable(program) and not isinstance(program, str):
        try:
            inspect.signature(program).bind(None)
        except TypeError:
            raise ValueError(f"builder {getattr(program, '__qualname__', program)} must accept (mesh, **options)") from None
        except ValueError:  # builtins without a signature: let the worker find out
            pass


def profile(program: Program, *, target: str = "cpu", devices: int = 1, mesh: dict[str, int] | None = None,
            timeout: float = 600, **options: Any) -> Profile:
    """Compiles `program` for `devices` devices of `target` in a worker and returns its Profile.

    `program` is a builder (a top-level function, or "package.module:function", or a built-in
    name such as "train-step") called as `build(mesh, **options)`; `mesh` names the axes and
    their sizes (product = devices; default: one axis "data" over all devices, or the built-in
    program's own). Raises ValueError (bad arguments, before any compile), UnknownTargetError,
    MissingGpuAotError (a GPU target without the gpu-aot extra) or ProgramFailed.
    """
    _check_builder_signature(program)
    if mesh is not None and (not isinstance(mesh, dict) or not mesh):
        raise ValueError(f"mesh must be a dict of axis name to size, e.g. {{'data': 2, 'model': 4}}, got {mesh!r}")
    try:
        return Profile(profile_program(program_spec(program), options, target=target, devices=devices,
                                       mesh=mesh, timeout_s=timeout))
    except CompileFailed as failure:
        raise ProgramFailed(failure) from None


def check(program: Program, *, target: str, devices: int, budget: int | float | str,
          mesh: dict[str, int] | None = None, timeout: float = 600, **options: Any) -> Profile:
    """Profiles `program` and returns the Profile if it fits `budget` (bytes, or e.g. "70GiB")
    per device; raises BudgetExceeded (whose message is the report) if it does not."""
    limit = parse_size(budget)
    result = profile(program, target=target, devices=devices, mesh=mesh, timeout=timeout, **options)
    if not result.fits(limit):
        raise BudgetExceeded(result, limit)
    return result


@dataclass
class Largest:
    """The largest value of one option at which a program fits: `value` (None when even the
    smallest does not), its `profile`, and every `probes` entry as (value, figure, bytes, fits)."""

    option: str
    budget: int
    value: int | None
    profile: Profile | None
    probes: list[tuple[int, str, int, bool]] = field(default_factory=list)


def largest(program: Program, option: str, *, target: str, devices: int, budget: int | float | str, up_to: int,
            step: int = 1, mesh: dict[str, int] | None = None, timeout: float = 600,
            on_probe: Callable[[int, Profile], None] | None = None, **options: Any) -> Largest:
    """The largest multiple of `step` up to `up_to` for the integer option `option` (sequence
    length, batch, layers, ...) at which `program` fits `budget` per device, by binary search:
    about log2(up_to / step) compiles. Memory must not shrink as the option grows. `on_probe`
    sees each compiled value and its Profile. Raises ValueError for bad arguments, and what
    `profile` raises (ProgramFailed for a compile that fails, e.g. runs out of host memory)."""
    limit = parse_size(budget)
    if not isinstance(option, str) or not option.isidentifier():
        raise ValueError(f"option must be the name of one of the builder's options, got {option!r}")
    if option in options:
        raise ValueError(f"{option} is searched; do not also pass {option}={options[option]!r}")
    for name, value in (("step", step), ("up_to", up_to)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if up_to < step:
        raise ValueError(f"up_to ({up_to}) must be at least step ({step})")
    probes: list[tuple[int, str, int, bool]] = []

    def probe(value: int) -> Profile | None:
        result = profile(program, target=target, devices=devices, mesh=mesh, timeout=timeout, **{option: value}, **options)
        name, size = result.figure
        fits = result.fits(limit)
        probes.append((value, name, size, fits))
        if on_probe:
            on_probe(value, result)
        return result if fits else None

    value, found = largest_multiple(probe, step=step, upper=up_to)
    return Largest(option, limit, value, found, probes)
