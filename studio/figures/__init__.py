"""Plotly figure builders: pure functions of summaries, arrays and frames (used by tabs and reports).

One module per area (activations, pruning, training, evaluation); shared builders live here.
"""
from __future__ import annotations

import plotly.graph_objects as go


def architecture_figure(summary: dict, base: dict | None = None) -> go.Figure:
    """Layers × blocks grid: query heads, KV heads and GLU width per layer, coloured by the
    fraction kept relative to `base` (all 1.0 for an unpruned model)."""
    base = base or summary
    rows = [("Query heads", "query_heads"), ("KV heads", "kv_heads"), ("MLP (GLU) width", "glu_width")]
    layers = summary["layers"]
    z, text = [], []
    for _, key in rows:
        kept = summary[key] / max(base[key], 1)
        z.append([kept] * layers)
        text.append([str(summary[key])] * layers)
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"L{i}" for i in range(layers)], y=[label for label, _ in rows], text=text,
        texttemplate="%{text}", zmin=0, zmax=1, colorscale="Blues", showscale=False,
        hovertemplate="%{y} in %{x}: %{text}<extra></extra>", xgap=2, ygap=2))
    removed = base["layers"] - layers
    title = (f"{summary.get('family', '')} · {layers} layers · hidden {summary['hidden_size']} · "
             f"{summary['params'] / 1e6:.1f}M params")
    if removed > 0:
        title += f" · {removed} layers removed"
    fig.update_layout(title=title, height=260, margin=dict(l=10, r=10, t=50, b=10),
                      xaxis=dict(tickangle=0, tickfont=dict(size=9)))
    return fig


def empty_figure(message: str = "Nothing to show yet") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#888"))
    fig.update_layout(height=260, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=10, r=10, t=10, b=10))
    return fig


def metrics_figure(rows: list[dict], keys: list[str], title: str = "", x: str = "step",
                   height: int = 300) -> go.Figure:
    """Line chart of metric-log rows (one trace per key present), e.g. losses over steps."""
    fig = go.Figure()
    for key in keys:
        points = [(r[x], r[key]) for r in rows if r.get(key) is not None and x in r]
        if points:
            xs, ys = zip(*points)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=key,
                                     marker=dict(size=4)))
    if not fig.data:
        return empty_figure(f"{title}: waiting for the first metrics" if title else "No metrics yet")
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title=x, legend=dict(orientation="h", y=-0.25))
    return fig
