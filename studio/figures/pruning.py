"""Plotly builders for the Pruning tab: importance heatmaps that show what a setting removes,
perplexity-vs-fraction curves, method comparison and preview bars. Pure functions of arrays,
masks and result dicts (no session, no gradio)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import torch

from studio.figures import empty_figure

REMOVED_SCALE = [[0.0, "rgba(220,40,40,0)"], [1.0, "rgba(220,40,40,0.85)"]]
KEPT, REMOVED = "#4C78A8", "#E45756"


def _as_tensor(values) -> torch.Tensor:
    return values.detach().float().cpu() if isinstance(values, torch.Tensor) else torch.tensor(
        values, dtype=torch.float32)


def _removed_matrix(keep: Mapping | None, shape: tuple[int, int]) -> torch.Tensor:
    """[L, N] float, 1 where `keep[layer]` is False (layers without a mask remove nothing)."""
    removed = torch.zeros(shape)
    for layer, mask in (keep or {}).items():
        layer = int(layer)
        if 0 <= layer < shape[0]:
            removed[layer] = (~_as_tensor(mask).bool()).float()
    return removed


def _row_normalised(scores: torch.Tensor) -> torch.Tensor:
    """Scale each layer's scores to [0, 1] so layers with different magnitudes stay readable."""
    low = scores.min(dim=1, keepdim=True).values
    high = scores.max(dim=1, keepdim=True).values
    return (scores - low) / (high - low).clamp_min(1e-12)


def _row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each score's rank within its layer scaled to [0, 1] (0 = least important): robust to the
    few huge outliers activations have, so the colours spread over the whole scale."""
    ranks = scores.argsort(dim=1).argsort(dim=1).float()
    return ranks / max(scores.shape[1] - 1, 1)


def _bin(matrix: torch.Tensor, bins: int) -> tuple[torch.Tensor, list[int]]:
    """Mean over `bins` contiguous column groups (columns kept as is when there are few)."""
    width = matrix.shape[1]
    if width <= bins:
        return matrix, list(range(width))
    size = math.ceil(width / bins)
    pad = size * math.ceil(width / size) - width
    padded = torch.nn.functional.pad(matrix, (0, pad), value=float("nan"))
    grouped = padded.reshape(matrix.shape[0], -1, size)
    return grouped.nanmean(dim=2), list(range(0, width, size))


def neuron_heatmap(scores, neuron_keep: Mapping | None = None, bins: int = 512,
                   title: str = "MLP neuron importance") -> go.Figure:
    """Layers × neurons (binned for wide layers): colour = importance rank within the layer,
    red overlay = share of the cell removed by the plan."""
    scores = _as_tensor(scores)
    if scores.ndim != 2 or scores.numel() == 0:
        return empty_figure("Compute importance to see the neuron scores")
    norm, starts = _bin(_row_ranks(scores), bins)
    removed, _ = _bin(_removed_matrix(neuron_keep, tuple(scores.shape)), bins)
    size = starts[1] - starts[0] if len(starts) > 1 else 1
    x = [f"{s}–{min(s + size, scores.shape[1]) - 1}" if size > 1 else str(s) for s in starts]
    y = [f"L{i}" for i in range(scores.shape[0])]
    fig = go.Figure([
        go.Heatmap(z=norm.tolist(), x=x, y=y, colorscale="Blues", zmin=0, zmax=1, showscale=False,
                   hovertemplate="%{y} neurons %{x}: importance rank %{z:.0%} in the layer<extra></extra>"),
        go.Heatmap(z=removed.tolist(), x=x, y=y, colorscale=REMOVED_SCALE, zmin=0, zmax=1,
                   showscale=False, hovertemplate="%{y} neurons %{x}: %{z:.0%} removed<extra></extra>"),
    ])
    share = removed.mean().item() if neuron_keep else 0.0
    fig.update_layout(title=f"{title} · red = removed ({share:.0%})", height=320,
                      margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(showticklabels=False, title=f"neurons ({size} per cell)"),
                      yaxis=dict(autorange="reversed", tickfont=dict(size=9)))
    return fig


def head_heatmap(scores, head_keep: Mapping | None = None, group_size: int = 1,
                 title: str = "Attention head importance") -> go.Figure:
    """Layers × query heads, KV groups separated by lines, removed heads crossed out in red."""
    scores = _as_tensor(scores)
    if scores.ndim != 2 or scores.numel() == 0:
        return empty_figure("Compute importance to see the head scores")
    n_layers, n_heads = scores.shape
    removed = _removed_matrix(head_keep, (n_layers, n_heads))
    x, y = [f"h{h}" for h in range(n_heads)], [f"L{i}" for i in range(n_layers)]
    text = [["✕" if removed[i, h] else "" for h in range(n_heads)] for i in range(n_layers)]
    fig = go.Figure([
        go.Heatmap(z=_row_normalised(scores).tolist(), x=x, y=y, colorscale="Blues", zmin=0,
                   zmax=1, showscale=False, customdata=scores.tolist(),
                   hovertemplate="%{y} %{x}: score %{customdata:.3g}<extra></extra>", xgap=1, ygap=1),
        go.Heatmap(z=removed.tolist(), x=x, y=y, colorscale=REMOVED_SCALE, zmin=0, zmax=1,
                   showscale=False, text=text, texttemplate="%{text}", hoverinfo="skip",
                   textfont=dict(color="white", size=10), xgap=1, ygap=1),
    ])
    group_size = max(int(group_size), 1)
    for boundary in range(group_size, n_heads, group_size):
        fig.add_vline(x=boundary - 0.5, line=dict(color="black", width=2))
    groups = n_heads // group_size
    fig.update_layout(title=f"{title} · {groups} KV groups of {group_size} · ✕ = removed "
                            f"({int(removed.sum())} of {n_layers * n_heads})", height=320,
                      margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(tickfont=dict(size=9)),
                      yaxis=dict(autorange="reversed", tickfont=dict(size=9)))
    return fig


def layer_bars(scores, drop_layers: Sequence[int] = (), title: str = "Layer importance") -> go.Figure:
    """One bar per decoder layer; the layers the setting removes are red."""
    scores = _as_tensor(scores).flatten()
    if scores.numel() == 0:
        return empty_figure("Compute importance to see the layer scores")
    drop = {int(i) for i in drop_layers or ()}
    colors = [REMOVED if i in drop else KEPT for i in range(len(scores))]
    fig = go.Figure(go.Bar(x=[f"L{i}" for i in range(len(scores))], y=scores.tolist(),
                           marker_color=colors,
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    removed = ", ".join(f"L{i}" for i in sorted(drop)) or "none"
    fig.update_layout(title=f"{title} · red = removed ({removed})", height=260,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(tickfont=dict(size=9)))
    return fig


def preview_bars(result: Mapping | None) -> go.Figure:
    """Grouped bars per preview set: unpruned baseline vs the previewed setting."""
    if not result or not result.get("perplexity"):
        return empty_figure("Move a slider to preview")
    sets = list(result["perplexity"])
    baseline = [result.get("baseline", {}).get(name) for name in sets]
    pruned = [result["perplexity"][name] for name in sets]
    fig = go.Figure([
        go.Bar(name="baseline", x=sets, y=baseline, marker_color="#9D9D9D",
               text=[f"{v:.1f}" if v else "" for v in baseline], textposition="outside"),
        go.Bar(name="pruned", x=sets, y=pruned, marker_color=REMOVED,
               text=[f"{v:.1f}" for v in pruned], textposition="outside"),
    ])
    top = max([v for v in baseline + pruned if v] or [1.0])
    fig.update_layout(barmode="group", title="Preview perplexity (lower is better)", height=260,
                      margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(range=[0, top * 1.2]),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def curve_figure(rows: Sequence[Mapping], x: str = "ratio", title: str = "",
                 baseline: Mapping | None = None) -> go.Figure:
    """Perplexity vs fraction pruned: one trace per (method, set) found in the rows.

    Rows look like {"ratio": 0.2, "perplexity": 35.1, "method": "activation", "set": "general"};
    `method` and `set` are optional, and a row may hold {"perplexity": {set: ppl}} instead."""
    traces: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows or ():
        ppl = row.get("perplexity", row.get("ppl"))
        items = ppl.items() if isinstance(ppl, Mapping) else [(row.get("set"), ppl)]
        for name, value in items:
            if value is None or row.get(x) is None:
                continue
            traces.setdefault((row.get("method"), name), []).append((float(row[x]), float(value)))
    if not traces:
        return empty_figure("Run the curve to see perplexity vs fraction pruned")
    fig = go.Figure()
    methods = list(dict.fromkeys(m for m, _ in traces))
    sets = list(dict.fromkeys(s for _, s in traces))
    palette = ("#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#9D755D", "#BAB0AC")
    for (method, name), points in traces.items():  # colour = method, dash = preview set
        xs, ys = zip(*sorted(points))
        label = " · ".join(str(p) for p in (method, name) if p) or "perplexity"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=label, line=dict(
            color=palette[methods.index(method) % len(palette)],
            dash=("solid", "dash", "dot")[sets.index(name) % 3])))
    for name, value in (baseline or {}).items():
        if value:
            fig.add_hline(y=value, line=dict(dash="dot", color="#888"),
                          annotation_text=f"{name} unpruned {value:.1f}")
    fig.update_layout(title=title or "Perplexity vs fraction pruned", height=320,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(title="fraction pruned",
                                                                      tickformat=".0%"),
                      yaxis=dict(title="perplexity", type="log"),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def method_comparison(rows: Sequence[Mapping], baseline: Mapping | None = None) -> go.Figure:
    """Several neuron methods' curves on one chart (rows carry a "method" key)."""
    return curve_figure(rows, title="Method comparison: perplexity vs fraction pruned",
                        baseline=baseline)
