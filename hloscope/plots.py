"""Plotly figures of profiles: the accumulated pre-allocation curve of the paper's Fig. 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go


def prealloc_figure(profiles: list[dict[str, Any]]) -> go.Figure:
    """Returns one figure with each profile's prealloc_accumulated curve (GiB) overlaid."""
    figure = go.Figure()
    for profile in profiles:
        points = profile["curve"]["prealloc_accumulated"]
        figure.add_trace(
            go.Scatter(
                x=[index for index, _ in points],
                y=[size / 2**30 for _, size in points],
                mode="lines",
                name=profile["label"],
            )
        )
    figure.update_layout(
        title="Accumulated memory pre-allocation over HLO instructions (prealloc_accumulated)",
        xaxis_title="HLO instruction (schedule order)",
        yaxis_title="GiB per device",
        template="plotly_white",
    )
    return figure


def write_html(profiles: list[dict[str, Any]], path: Path) -> None:
    """Writes the overlaid curves as a self-contained HTML file (written whole, then renamed)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    prealloc_figure(profiles).write_html(partial, include_plotlyjs=True)
    partial.replace(path)
