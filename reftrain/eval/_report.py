"""NIAH reports: rich tables (depth x length), a plotly heatmap, and niah.json + niah.html.

Both are rendered in memory before either is written, and each is written through
reftrain.files.atomic_write_bytes, so a failed run never leaves a half-written file.
"""

from __future__ import annotations

from pathlib import Path

from reftrain.files import atomic_write_bytes, write_json

SCHEMA = "reftrain.eval.niah/1"


def _colour(accuracy: float) -> str:
    return "green" if accuracy >= 0.8 else "yellow" if accuracy >= 0.4 else "red"


def accuracy_table(result: dict):
    """Returns a rich Table: one row per depth, one column per length, cells = accuracy."""
    from rich.table import Table

    title = f"NIAH accuracy, rope_dtype={result['rope_dtype']}"
    table = Table(title=title, min_width=len(title) + 2,
                  caption=f"{result['trials']} trials per cell, mean {result['mean_accuracy']:.2f}")
    table.add_column("depth \\ length", justify="right")
    for length in result["lengths"]:
        table.add_column(f"{length:,}", justify="right")
    for depth, row in zip(result["depths"], result["accuracy"]):
        table.add_row(f"{depth:g}%", *(f"[{_colour(a)}]{a:.2f}[/]" for a in row))
    return table


def print_tables(results: list[dict], console=None) -> None:
    """Prints one table per result, side by side when they fit."""
    from rich.columns import Columns
    from rich.console import Console

    console = console or Console()
    console.print(Columns([accuracy_table(r) for r in results], padding=(0, 4)))


def heatmap_figure(results: list[dict]):
    """Returns a plotly Figure: one heatmap per result (depth on y, length on x, accuracy colour)."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(results), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=[f"rope_dtype={r['rope_dtype']}" for r in results])
    for i, r in enumerate(results, start=1):
        text = [[f"{a:.2f}" for a in row] for row in r["accuracy"]]
        fig.add_trace(go.Heatmap(
            z=r["accuracy"], x=[str(x) for x in r["lengths"]], y=[f"{d:g}%" for d in r["depths"]],
            zmin=0.0, zmax=1.0, colorscale="RdYlGn", showscale=i == len(results), text=text,
            texttemplate="%{text}", colorbar={"title": "accuracy"},
            hovertemplate="length %{x}<br>depth %{y}<br>accuracy %{z:.2f}<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="context length (tokens)", type="category", row=1, col=i)
    fig.update_yaxes(type="category", autorange="reversed")  # 0% (the start) at the top
    fig.update_yaxes(title_text="needle depth", row=1, col=1)
    trials = results[0]["trials"]
    fig.update_layout(title=f"Needle in a haystack: exact match of a 7-digit number ({trials} trials per cell)",
                      width=max(520, 480 * len(results)), height=460)
    return fig


def write_outputs(out_dir: Path, payload: dict, results: list[dict]) -> tuple[Path, Path | None]:
    """Writes `out_dir/niah.json` (payload) and `out_dir/niah.html` (heatmap); returns both paths,
    the second None where plotly is missing (a GPU host with only jax's stack: the JSON is what
    the analyses read)."""
    json_path, html_path = Path(out_dir) / "niah.json", Path(out_dir) / "niah.html"
    try:
        html = heatmap_figure(results).to_html(include_plotlyjs=True).encode()
    except ImportError:
        html, html_path = None, None
    write_json(json_path, payload, indent=1)
    if html is not None:
        atomic_write_bytes(html_path, html)
    return json_path, html_path
