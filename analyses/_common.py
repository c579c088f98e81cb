"""What every analyses/ script shares: its command line, its outputs (JSON, a plotly figure as
HTML and PNG), and a paper-vs-ours table that explains every gap larger than 10%.

Scripts import it as `from _common import ...`: running `python analyses/NAME.py` puts this
folder first on sys.path.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when not pip-installed

from reftrain.files import atomic_write_bytes  # noqa: E402
from reftrain.files import write_json as write_json_file  # noqa: E402

if TYPE_CHECKING:  # plotly is imported by the scripts that plot; the GPU host may lack it
    import plotly.graph_objects as go

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.10  # a gap to the paper above this must be explained in the output


def parse_args(doc: str | None, configure: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    """The common command line: --out-dir and --quick (the reduced size CI runs), plus extras."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help="where NAME.json, NAME.html and NAME.png go (default: analyses/results)")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced size that runs in seconds (what the tests run)")
    if configure:
        configure(parser)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Claim:
    """One checkable number: the paper's value beside ours, and why they differ if they do."""

    name: str
    paper: float | None
    ours: float
    unit: str = ""
    why: str = ""  # required when the relative gap exceeds TOLERANCE

    @property
    def gap(self) -> float | None:
        if self.paper in (None, 0):
            return None
        return (self.ours - self.paper) / abs(self.paper)

    def to_dict(self) -> dict[str, Any]:
        gap = self.gap
        return {"name": self.name, "paper": self.paper, "ours": self.ours, "unit": self.unit,
                "relative_gap": gap, "within_tolerance": gap is None or abs(gap) <= TOLERANCE,
                "why": self.why or None}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}"


def print_claims(title: str, claims: list[Claim], console: Console | None = None) -> None:
    """Prints paper vs ours; a gap above TOLERANCE without a reason is a bug in the script."""
    for claim in claims:
        if claim.gap is not None and abs(claim.gap) > TOLERANCE and not claim.why:
            raise AssertionError(f"{claim.name}: {claim.gap:+.1%} from the paper and no reason given")
    table = Table(title=title)
    for column in ("claim", "paper", "ours", "unit", "gap", "why it differs"):
        table.add_column(column, overflow="fold")
    for claim in claims:
        gap = claim.gap
        table.add_row(claim.name, _fmt(claim.paper), _fmt(claim.ours), claim.unit,
                      "-" if gap is None else f"{gap:+.1%}",
                      claim.why if gap is not None and abs(gap) > TOLERANCE else (claim.why or ""))
    (console or Console(width=160)).print(table)


def print_table(title: str, columns: list[str], rows: list[list[Any]], console: Console | None = None) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[value if isinstance(value, str) else _fmt(value) for value in row])
    (console or Console(width=160)).print(table)


def write_json(path: Path, payload: dict[str, Any], indent: int | None = 1) -> None:
    write_json_file(path, payload, indent=indent, default=str)


def compile_all(name: str, jobs: list[tuple[str, Callable[[], dict]]],
                failures: tuple[type[BaseException], ...]) -> list[dict] | int:
    """Runs each (label, compile) in order and prints its compile time; returns the results, or
    after one line on stderr the exit code: 2 without the gpu-aot extra, 1 on one of `failures`."""
    from hloscope.targets import MissingGpuAotError

    results = []
    try:
        for label, compile_one in jobs:
            results.append(compile_one())
            print(f"compiled {label}: {results[-1]['compile_wall_s']} s", flush=True)
    except MissingGpuAotError as error:
        print(f"{name}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except failures as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    return results


def save_figure(figure: go.Figure, out_dir: Path, name: str, *, width: int = 1000, height: int = 560) -> dict[str, str]:
    """Writes NAME.html (plotly.js from its CDN, so the file stays small) and NAME.png.

    Without a Chrome for kaleido the PNG is skipped with one line saying how to get one.
    Each file is written whole and renamed, so a reader never sees half of it.
    """
    out_dir = Path(out_dir)
    written = {}
    html = figure.to_html(include_plotlyjs="cdn", full_html=True)
    atomic_write_bytes(out_dir / f"{name}.html", html.encode())
    written["html"] = str(out_dir / f"{name}.html")
    for attempt in range(2):  # a second try: Chrome can fail to start in time on a loaded machine
        try:
            png = figure.to_image(format="png", width=width, height=height, scale=1)
            break
        except Exception as error:  # kaleido missing, or no Chrome for it to drive
            if attempt == 1 or isinstance(error, ImportError):
                print(f"{name}.png skipped ({type(error).__name__}: {str(error)[:200]}): PNG export needs kaleido "
                      "and Chrome (pip install kaleido; apt-get install chromium, or run plotly_get_chrome)")
                return written
    atomic_write_bytes(out_dir / f"{name}.png", png)
    written["png"] = str(out_dir / f"{name}.png")
    return written
