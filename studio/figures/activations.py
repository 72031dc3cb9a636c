"""Plotly builders for the Activations views: pure functions of arrays from `studio.activations`.

Readable for 30 layers and for 32 layers × 14k neurons: wide axes are binned (the title and the
axis say how), layer 0 is the top row, tokens are axis labels (thinned when there are many).
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_BINS = 512  # columns per heatmap row before binning
MAX_TOKEN_TICKS = 48
MAX_CELL_TEXT = 24
CLIP_PERCENTILE = 99.5  # tokens beyond which logit-lens cells lose their text (hover keeps it)


def _np(values) -> np.ndarray:
    return values.numpy() if hasattr(values, "numpy") else np.asarray(values)


def bin_columns(matrix, max_bins: int = MAX_BINS, reduce: str = "mean") -> tuple[np.ndarray, int]:
    """[L, N] → ([L, ceil(N/per_bin)], per_bin): mean (or max) over groups of adjacent columns."""
    matrix = _np(matrix).astype(np.float32)
    n = matrix.shape[1]
    per_bin = max(1, math.ceil(n / max_bins))
    if per_bin == 1:
        return matrix, 1
    pad = (-n) % per_bin
    padded = np.pad(matrix, ((0, 0), (0, pad)), constant_values=np.nan)
    grouped = padded.reshape(matrix.shape[0], -1, per_bin)
    return (np.nanmax if reduce == "max" else np.nanmean)(grouped, axis=2), per_bin


def _layers(n: int) -> list[str]:
    return [f"L{i}" for i in range(n)]


def _height(rows: int, extra: int = 140) -> int:
    return int(min(max(rows * 20 + extra, 300), 1100))


def _token_axis(fig: go.Figure, tokens: list[str], axis: str = "xaxis", **kw) -> None:
    step = max(1, math.ceil(len(tokens) / MAX_TOKEN_TICKS))
    vals = list(range(0, len(tokens), step))
    fig.update_layout({axis: dict(tickmode="array", tickvals=vals, ticktext=[tokens[i] for i in vals],
                                  tickangle=-60 if axis.startswith("x") else 0, **kw)})


def token_heatmap(values, tokens: list[str], title: str, colorbar: str = "norm",
                  colorscale: str = "Viridis", log: bool = False) -> go.Figure:
    """Layer × token heatmap ([L, T] values), token strings on the x axis; `log` colours by
    log10 (the first token's huge norm would otherwise hide every other token)."""
    values = _np(values).astype(np.float64)
    z = np.log10(np.maximum(values, 1e-12)) if log else values
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(values.shape[1])), y=_layers(values.shape[0]), colorscale=colorscale,
        colorbar=dict(title=f"log₁₀ {colorbar}" if log else colorbar),
        customdata=[tokens] * values.shape[0], text=np.vectorize(lambda v: f"{v:.4g}")(values),
        hovertemplate="%{y} · token %{x} %{customdata}: %{text}<extra></extra>"))
    _token_axis(fig, tokens)
    fig.update_layout(title=title, height=_height(values.shape[0]), xaxis_title="token",
                      yaxis=dict(autorange="reversed", title="layer"),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def prompt_heatmap_figure(result: dict) -> go.Figure:
    return token_heatmap(result["values"], result["tokens"],
                         f"‖{result['component']}‖ per layer and token (log colour scale)",
                         log=True)


def neuron_heatmap(acts, title: str = "Mean |GLU activation| per neuron", sort: bool = False,
                   max_bins: int = MAX_BINS, colorscale: str = "Viridis", zmid=None) -> go.Figure:
    """Layer × neuron heatmap; `sort` orders each layer's neurons by value (a profile, not an
    identity), wide layers are binned into columns of `per_bin` neurons (mean)."""
    acts = _np(acts)
    if sort:
        acts = -np.sort(-acts, axis=1)
    binned, per_bin = bin_columns(acts, max_bins)
    what = "neuron rank (sorted per layer)" if sort else "neuron index"
    if per_bin > 1:
        title += f" · binned: {per_bin} neurons per column (mean)"
        what += f", bins of {per_bin}"
    limit = float(np.nanpercentile(np.abs(binned), CLIP_PERCENTILE))
    if limit and limit < float(np.nanmax(np.abs(binned))):  # a few huge outliers: cap the colours
        title += f"<br><sup>colour capped at the {CLIP_PERCENTILE}th percentile ({limit:.3g}); " \
                 f"max {float(np.nanmax(np.abs(binned))):.3g}</sup>"
    fig = go.Figure(go.Heatmap(
        z=binned, x=np.arange(binned.shape[1]) * per_bin, y=_layers(acts.shape[0]),
        colorscale=colorscale, zmid=zmid, zmax=limit or None,
        zmin=(-limit if zmid is not None else float(np.nanmin(binned))) if limit else None,
        hovertemplate="%{y} · neurons %{x}+: %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title, height=_height(acts.shape[0]), xaxis_title=what,
                      yaxis=dict(autorange="reversed", title="layer"),
                      margin=dict(l=10, r=10, t=75, b=10))
    return fig


def head_heatmap(norms, group_size: int = 1) -> go.Figure:
    """Layer × query-head heatmap of mean head output norm; KV groups separated by lines."""
    norms = _np(norms)
    layers, heads = norms.shape
    labels = [f"h{h}·kv{h // group_size}" for h in range(heads)]
    fig = go.Figure(go.Heatmap(
        z=norms, x=labels, y=_layers(layers), colorscale="Viridis", xgap=1, ygap=1,
        colorbar=dict(title="mean ‖head‖"),
        hovertemplate="%{y} · %{x}: %{z:.4g}<extra></extra>"))
    for g in range(1, heads // max(group_size, 1)):
        x = g * group_size - 0.5
        fig.add_shape(type="line", x0=x, x1=x, y0=-0.5, y1=layers - 0.5, line=dict(color="white",
                      width=3))
    fig.update_layout(title=f"Head importance (mean output norm before o_proj) · {heads} query heads "
                            f"in KV groups of {group_size}", height=_height(layers),
                      xaxis_title="query head · KV group", yaxis=dict(autorange="reversed", title="layer"),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def attention_figure(result: dict) -> go.Figure:
    pattern, tokens = _np(result["pattern"]), result["tokens"]
    n = len(tokens)
    fig = go.Figure(go.Heatmap(
        z=pattern, x=list(range(n)), y=list(range(n)), colorscale="Blues", zmin=0, zmax=1,
        colorbar=dict(title="weight"),
        hovertemplate="query %{y} → key %{x}: %{z:.3f}<extra></extra>"))
    _token_axis(fig, tokens, "xaxis", title="key (attended to)")
    _token_axis(fig, tokens, "yaxis", title="query", autorange="reversed")
    fig.update_layout(title=f"Attention pattern · layer {result['layer']} · head {result['head']} "
                            f"(KV head {result['kv_head']})",
                      height=int(min(max(n * 26 + 200, 460), 950)), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def influence_figure(values) -> go.Figure:
    values = _np(values)
    order = np.argsort(values)
    colors = ["#d62728" if i in set(order[:max(1, len(values) // 6)]) else "#1f77b4"
              for i in range(len(values))]
    fig = go.Figure(go.Bar(x=_layers(len(values)), y=values, marker_color=colors,
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Block influence (1 − cos(layer input, output)); red = least influential, "
                            "depth-pruning candidates", height=320, xaxis_title="layer",
                      yaxis_title="block influence", margin=dict(l=10, r=10, t=50, b=10))
    return fig


def logit_lens_figure(lens: dict) -> go.Figure:
    """Layer × position heatmap of the top-1 probability, the top-1 token written in each cell."""
    probs = _np(lens["top_probs"])
    top1 = [[pos[0] for pos in layer] for layer in lens["top_tokens"]]
    hover = [["<br>".join(f"{w!r} {p:.3f}" for w, p in zip(pos, ps)) for pos, ps in zip(layer, lp)]
             for layer, lp in zip(lens["top_tokens"], probs)]
    layers, n = probs.shape[0], probs.shape[1]
    fig = go.Figure(go.Heatmap(
        z=probs[:, :, 0], x=list(range(n)), y=_layers(layers), text=top1, customdata=hover,
        texttemplate="%{text}" if n <= MAX_CELL_TEXT else None, textfont=dict(size=9),
        colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="p(top-1)"),
        hovertemplate="%{y} · after token %{x}<br>%{customdata}<extra></extra>"))
    _token_axis(fig, lens["tokens"])
    fig.update_layout(title="Logit lens: next-token prediction read from each layer (final norm + "
                            "LM head)", height=_height(layers), xaxis_title="input token",
                      yaxis=dict(autorange="reversed", title="layer"),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def pair_figure(result: dict) -> go.Figure:
    """Bar: per-layer mean activation difference; heatmap: per token (same length) or per
    dimension (binned) difference."""
    per_layer = _np(result["per_layer"])
    layers = len(per_layer)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.3, 0.7], vertical_spacing=0.12,
                        subplot_titles=("Mean |activation difference| per layer", "difference"))
    fig.add_trace(go.Bar(x=_layers(layers), y=per_layer, marker_color="#9467bd",
                         hovertemplate="%{x}: %{y:.4g}<extra></extra>"), row=1, col=1)
    if result.get("token_diff") is not None:
        tokens = [a if a == b else f"{a}→{b}" for a, b in zip(result["tokens_a"], result["tokens_b"])]
        z, x_title = _np(result["token_diff"]), "token (A→B where they differ)"
        fig.add_trace(go.Heatmap(z=z, x=list(range(z.shape[1])), y=_layers(layers),
                                 colorscale="Magma", colorbar=dict(title="‖A−B‖", y=0.35, len=0.7),
                                 hovertemplate="%{y} · token %{x}: %{z:.4g}<extra></extra>"),
                      row=2, col=1)
        step = max(1, math.ceil(len(tokens) / MAX_TOKEN_TICKS))
        vals = list(range(0, len(tokens), step))
        fig.update_xaxes(tickmode="array", tickvals=vals, ticktext=[tokens[i] for i in vals],
                         tickangle=-60, row=2, col=1)
        heat_title = "‖A − B‖ per token"
    else:
        z, per_bin = bin_columns(result["dim_diff"])
        x_title = "dimension" + (f" (bins of {per_bin}, mean)" if per_bin > 1 else "")
        fig.add_trace(go.Heatmap(z=z, x=np.arange(z.shape[1]) * per_bin, y=_layers(layers),
                                 colorscale="RdBu", zmid=0, colorbar=dict(title="A−B", y=0.35, len=0.7),
                                 hovertemplate="%{y} · dim %{x}+: %{z:.4g}<extra></extra>"),
                      row=2, col=1)
        heat_title = "token-averaged A − B per dimension (prompts differ in length)"
    fig.update_yaxes(autorange="reversed", row=2, col=1)
    fig.update_xaxes(title_text=x_title, row=2, col=1)
    fig.layout.annotations[1].update(text=heat_title)
    fig.update_layout(title=f"Prompt pair · {result['component']}", showlegend=False,
                      height=_height(layers, 420), margin=dict(l=10, r=10, t=60, b=10))
    return fig


def dataset_diff_figure(diff, name_a: str, name_b: str, sort: bool = False) -> go.Figure:
    """Layer × neuron difference of mean |activation| (b − a): red = used more by b."""
    fig = neuron_heatmap(_np(diff), f"Neurons: {_short(name_b)} − {_short(name_a)} (mean |act|)",
                         sort, colorscale="RdBu_r", zmid=0)
    fig.update_traces(colorbar=dict(title="b − a"))
    return fig


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-width + 1:]
