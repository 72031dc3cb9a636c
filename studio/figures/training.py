"""Plotly builders for training runs (distillation, LoRA): pure functions of metric-log rows.

Rows are what studio.monitor.MetricLog writes: the Trainer's logs (loss, learning_rate, grad_norm,
components such as loss_ce / loss_kl / loss_cos, tokens_per_s) and evaluation rows
(ppl_student, ppl_teacher, ppl_before), all keyed by "step".
"""
from __future__ import annotations

import plotly.graph_objects as go

from studio.figures import empty_figure, metrics_figure

LOSS_KEYS = ["loss", "loss_ce", "loss_kl", "loss_cos"]


def dedupe(rows: list[dict]) -> list[dict]:
    """Keep the last row per (step, kind): a resumed run repeats the steps after its checkpoint."""
    kept: dict = {}
    for row in rows:
        kind = "eval" if "ppl_student" in row else "train" if "loss" in row else "other"
        kept[(row.get("step"), kind)] = row
    return sorted(kept.values(), key=lambda r: (r.get("step") or 0))


def loss_figure(rows: list[dict], keys: list[str] | None = None) -> go.Figure:
    present = [k for k in (keys or LOSS_KEYS) if any(r.get(k) is not None for r in rows)]
    return metrics_figure(dedupe(rows), present or LOSS_KEYS, "Loss and its components")


def lr_figure(rows: list[dict]) -> go.Figure:
    return metrics_figure(dedupe(rows), ["learning_rate"], "Learning rate", height=240)


def grad_norm_figure(rows: list[dict]) -> go.Figure:
    return metrics_figure(dedupe(rows), ["grad_norm"], "Gradient norm", height=240)


def throughput_figure(rows: list[dict]) -> go.Figure:
    return metrics_figure(dedupe(rows), ["tokens_per_s"], "Tokens per second", height=240)


def perplexity_figure(rows: list[dict]) -> go.Figure:
    """Held-out perplexity of the student over steps, with the teacher's and the student's before
    training as dashed reference lines."""
    evals = [r for r in dedupe(rows) if r.get("ppl_student") is not None]
    if not evals:
        return empty_figure("Held-out perplexity: waiting for the first evaluation")
    fig = metrics_figure(evals, ["ppl_student"], "Held-out perplexity")
    last = evals[-1]
    # reference lines as traces, not add_hline: on a log axis plotly reads an annotation's y as
    # log10(y), which pushed the labels (and the axis range) to 10^160
    span = [evals[0]["step"], max(evals[-1]["step"], evals[0]["step"] + 1)]
    for key, label, colour in (("ppl_teacher", "teacher", "#2ca02c"), ("ppl_before", "before", "#d62728")):
        if last.get(key) is not None:
            fig.add_trace(go.Scatter(x=span, y=[last[key]] * 2, mode="lines", name=f"{label} {last[key]:.2f}",
                                     line={"dash": "dash", "color": colour}, hoverinfo="name"))
    fig.update_yaxes(type="log")
    return fig


def training_figures(rows: list[dict]) -> dict[str, go.Figure]:
    """Every chart of a run, keyed like the tab's plots."""
    return {"loss": loss_figure(rows), "lr": lr_figure(rows), "grad_norm": grad_norm_figure(rows),
            "tokens_per_s": throughput_figure(rows), "perplexity": perplexity_figure(rows)}
