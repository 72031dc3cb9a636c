"""Comparison charts: one plotly figure per metric group, from the comparison DataFrame."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from studio.figures import empty_figure

GROUPS = [
    ("Size", [("params", "Parameters", 1e-6, "M"), ("disk_mib", "On disk", 1, " MiB")]),
    ("Perplexity (lower is better)", [("ppl_general", "General", 1, ""),
                                      ("ppl_domain", "Domain", 1, "")]),
    ("Speed (higher is better)", [("forward_tok_s", "Forward tok/s", 1, ""),
                                  ("gen_tok_s", "Generation tok/s", 1, "")]),
    ("Latency and memory", [("ttft_s", "Time to first token (s)", 1, ""),
                            ("peak_mem_mib", "Peak memory (MiB)", 1, "")]),
]


def _bar_group(frame: pd.DataFrame, title: str, metrics) -> go.Figure:
    fig = go.Figure()
    for key, label, scale, unit in metrics:
        if key not in frame or frame[key].isna().all():
            continue
        values = [None if pd.isna(v) else float(v) * scale for v in frame[key]]
        fig.add_trace(go.Bar(x=list(frame["role"]), y=values, name=label,
                             text=[("" if v is None else f"{v:,.3g}{unit}") for v in values],
                             textposition="auto"))
    if not fig.data:
        return empty_figure(f"{title}: no data")
    fig.update_layout(title=title, barmode="group", height=320,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.15))
    return fig


def task_figure(frame: pd.DataFrame) -> go.Figure:
    cols = [c for c in frame.columns if c.startswith("task:")]
    if not cols:
        return empty_figure("No task scores yet: run lm-eval tasks first")
    fig = go.Figure()
    for col in cols:
        fig.add_trace(go.Bar(x=list(frame["role"]), y=frame[col], name=col[5:]))
    fig.update_layout(title="Task scores (accuracy)", barmode="group", height=320,
                      yaxis=dict(range=[0, 1]), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def comparison_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Size, perplexity, speed, latency/memory and task-score charts (roles on the x axis)."""
    if frame is None or frame.empty:
        return [empty_figure("Run a comparison first")]
    return [*(_bar_group(frame, title, metrics) for title, metrics in GROUPS), task_figure(frame)]


def overview_figure(frame: pd.DataFrame) -> go.Figure:
    """Each metric relative to the base model (base = 1.0), one group of bars per metric."""
    if frame is None or frame.empty or "base" not in set(frame["role"]):
        return empty_figure("Relative view needs the base model in the comparison")
    base = frame[frame["role"] == "base"].iloc[0]
    keys = [k for k in ("params", "ppl_general", "ppl_domain", "forward_tok_s", "gen_tok_s")
            if k in frame and pd.notna(base.get(k)) and base.get(k)]
    fig = go.Figure()
    for _, row in frame.iterrows():
        fig.add_trace(go.Bar(x=keys, y=[float(row[k]) / float(base[k]) if pd.notna(row[k]) else None
                                        for k in keys], name=str(row["role"])))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888")
    fig.update_layout(title="Relative to base (1.0 = unchanged)", barmode="group", height=340,
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig
