"""The HTML report: one self-contained page a person would rather look at than read.

After XProf's memory viewer: the memory live over program order with XLA's total and the budget
as lines and the peak marked (hover: instruction, opcode, shape, bytes, source line), the
paper's accumulated pre-allocation curve beneath it, the buffers live at the peak as a bar chart
and a table, and the findings with cause and remedy. Two profiles are overlaid (`hloscope diff`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hloscope._files import atomic_write_text
from hloscope.hlo.frames import entry_source
from hloscope.profiling import judged_figure
from hloscope.units import gib, human_bytes

_COLORS = ("#1f77b4", "#d62728")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1400px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
.meta { color: #555; font-size: 13px; margin: 2px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-size: 12px; } .over { color: #b00020; font-weight: 600; } .ok { color: #1b7f3b; font-weight: 600; }
.finding { margin: 10px 0; padding: 8px 12px; border-left: 4px solid #d62728; background: #fafafa; }
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _hover_points(profile: dict[str, Any], curve: str) -> tuple[list[int], list[float], list[list[str]]]:
    """x (schedule index), y (GiB) and hover fields of one downsampled curve."""
    points = profile["curve"].get(curve) or []
    at = profile["curve"].get("at") or {}
    xs, ys, data = [], [], []
    for index, size in points:
        info = at.get(str(index), {})
        xs.append(index)
        ys.append(size / 2**30)
        data.append([info.get("instruction", "-"), info.get("opcode", "-"), info.get("shape", "-"),
                     human_bytes(size), entry_source(info) or "-"])
    return xs, ys, data


_HOVER = ("<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]}<br>%{customdata[3]}"
          "<br>source: %{customdata[4]}<extra>%{fullData.name}</extra>")


def curves_figure(profiles: list[dict[str, Any]], budget: int | None) -> go.Figure:
    """Live bytes (top) and accumulated pre-allocation (bottom) over schedule order, per profile."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.62, 0.38],
                           subplot_titles=("live_peak: bytes live at each instruction (hloscope's liveness simulation)",
                                           "prealloc_accumulated: running sum of what each instruction allocates (the paper's Fig. 2)"))
    for number, profile in enumerate(profiles):
        color = _COLORS[number % len(_COLORS)]
        # Overlaid profiles are A, B, ... as in `hloscope diff`; the headings give their labels.
        tag = f"{chr(ord('A') + number)} " if len(profiles) > 1 else ""
        name = f"{tag}live"
        xs, ys, data = _hover_points(profile, "live")
        if xs:
            figure.add_trace(go.Scatter(x=xs, y=ys, customdata=data, mode="lines", name=name, line={"color": color},
                                        hovertemplate=_HOVER), row=1, col=1)
            peak = max(range(len(ys)), key=ys.__getitem__)
            figure.add_trace(go.Scatter(x=[xs[peak]], y=[ys[peak]], customdata=[data[peak]], mode="markers+text",
                                        marker={"size": 11, "color": color, "symbol": "diamond"},
                                        text=[f"peak {ys[peak]:.2f} GiB"], textposition="top right",
                                        name=f"{tag}live_peak",
                                        hovertemplate=_HOVER), row=1, col=1)
        xs, ys, data = _hover_points(profile, "prealloc_accumulated")
        figure.add_trace(go.Scatter(x=xs, y=ys, customdata=data, mode="lines", line={"color": color, "dash": "dot"},
                                    name=f"{tag}accumulated",
                                    hovertemplate=_HOVER), row=2, col=1)
        total = profile["figures"].get("xla_total")
        if total is not None:
            figure.add_hline(y=total / 2**30, line={"color": color, "dash": "dash", "width": 1}, row=1, col=1,
                             annotation_text=f"{tag}xla_total {gib(total)}", annotation_position="bottom left")
    if budget is not None:
        figure.add_hline(y=budget / 2**30, line={"color": "#b00020", "width": 2}, row=1, col=1,
                         annotation_text=f"budget {gib(budget)}", annotation_position="top left")
    figure.update_yaxes(title_text="GiB per device", rangemode="tozero")
    figure.update_xaxes(title_text="HLO instruction (schedule order)", row=2, col=1)
    figure.update_layout(template="plotly_white", height=720, hovermode="closest",
                         legend={"orientation": "h", "y": -0.12}, margin={"t": 40})
    return figure


def buffers_figure(profile: dict[str, Any]) -> go.Figure:
    """The buffers live at the peak, largest on top."""
    buffers = list(reversed(profile.get("live_at_peak") or []))
    labels = [f"{b['instruction']}  {b['shape']}" for b in buffers]
    data = [[b["instruction"], b.get("opcode", "-"), b["shape"], human_bytes(b["bytes"]), entry_source(b) or "-"]
            for b in buffers]
    figure = go.Figure(go.Bar(x=[b["bytes"] / 2**30 for b in buffers], y=labels, orientation="h", customdata=data,
                              marker={"color": _COLORS[0]}, hovertemplate=_HOVER, name="live at peak"))
    figure.update_layout(template="plotly_white", height=max(260, 26 * len(buffers) + 80),
                         xaxis_title="GiB per device", margin={"l": 20, "t": 20}, yaxis={"automargin": True})
    return figure


def _figures_table(profile: dict[str, Any], budget: int | None) -> str:
    figures, sources = profile["figures"], profile.get("figure_sources") or {}
    names = ("xla_total", "peak_memory_in_bytes", "layout_total", "live_peak", "prealloc_accumulated")
    rows = [(name, figures.get(name), sources.get(name, "-")) for name in names if name in figures]
    budget = budget if budget is not None else (profile.get("target") or {}).get("memory_bytes")
    body = "".join(f"<tr><td>{_e(n)}</td><td class=num>{_e(human_bytes(v))}</td><td>{_e(s)}</td></tr>" for n, v, s in rows)
    if budget is not None:
        judged = judged_figure(figures)[1]
        verdict = "<span class=ok>fits</span>" if judged <= budget else "<span class=over>does not fit</span>"
        body += f"<tr><td>budget</td><td class=num>{_e(human_bytes(budget))}</td><td>{verdict}</td></tr>"
    return f"<table><tr><th>figure</th><th>bytes per device</th><th>source</th></tr>{body}</table>"


def _buffers_table(profile: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(b['instruction'])}</code></td><td>{_e(b.get('opcode'))}</td><td><code>{_e(b['shape'])}</code></td>"
        f"<td class=num>{_e(human_bytes(b['bytes']))}</td><td><code>{_e(entry_source(b))}</code></td></tr>"
        for b in profile.get("live_at_peak") or [])
    return ("<table><tr><th>instruction</th><th>opcode</th><th>shape</th><th>bytes</th><th>source</th></tr>"
            f"{rows}</table>")


def _findings_html(profile: dict[str, Any]) -> str:
    findings = profile.get("findings") or []
    if not findings:
        return "<p>No findings.</p>"
    return "".join(
        f"<div class=finding><b>{_e(f['kind'])}</b>: <code>{_e(f['shape'])}</code>, {_e(human_bytes(f['bytes']))}"
        f" at <code>{_e(entry_source(f) or f.get('op_name') or f['instruction'])}</code>"
        f"<br><b>cause</b>: {_e(f['cause'])}<br><b>remedy</b>: {_e(f['remedy'])}</div>"
        for f in findings)


def _meta(profile: dict[str, Any]) -> str:
    source, target = profile.get("source") or {}, profile.get("target") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (profile.get("versions") or {}).items() if v)
    what = source.get("program") or source.get("hlo_file") or profile.get("module")
    mesh = source.get("mesh")
    lines = [
        f"program <code>{_e(what)}</code>" + (f", options <code>{_e(source.get('options'))}</code>" if source.get("options") else ""),
        f"target <b>{_e(target.get('name', 'none (HLO text)'))}</b> ({_e(target.get('device_kind', '-'))}), "
        f"{_e(source.get('devices', '-'))} devices" + (f", mesh <code>{_e(mesh)}</code>" if mesh else ""),
        f"{_e(profile.get('dialect'))} module <code>{_e(profile.get('module'))}</code>, "
        f"{profile['curve']['instructions']:,} instructions",
        f"versions: {_e(versions)}",
    ]
    return "".join(f"<p class=meta>{line}</p>" for line in lines)


def report_html(profiles: list[dict[str, Any]], *, budget: int | None = None) -> str:
    """Returns the whole page (plotly.js inlined: it opens without a network)."""
    title = profiles[0]["label"] if len(profiles) == 1 else " vs ".join(p["label"] for p in profiles)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>hloscope: {_e(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>hloscope: {_e(title)}</h1>"]
    for number, profile in enumerate(profiles):
        if len(profiles) > 1:
            parts.append(f"<h2>{chr(ord('A') + number)} = {_e(profile['label'])}</h2>")
        parts.append(_meta(profile) + _figures_table(profile, budget))
    parts.append("<h2>Memory over the program</h2>")
    parts.append(curves_figure(profiles, budget).to_html(full_html=False, include_plotlyjs=True))
    for number, profile in enumerate(profiles):
        suffix = f": {chr(ord('A') + number)} = {_e(profile['label'])}" if len(profiles) > 1 else ""
        parts.append(f"<h2>Buffers live at the peak{suffix}</h2>")
        parts.append(buffers_figure(profile).to_html(full_html=False, include_plotlyjs=False))
        parts.append(_buffers_table(profile))
        parts.append(f"<h2>Findings{suffix}</h2>" + _findings_html(profile))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(profiles: list[dict[str, Any]], path: str | Path, *, budget: int | None = None) -> None:
    """Writes report_html(profiles) to `path` whole (never a half-written page)."""
    atomic_write_text(path, report_html(profiles, budget=budget))
