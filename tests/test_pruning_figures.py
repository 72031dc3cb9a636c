"""The Pruning tab's figures mark exactly what a setting removes."""
from __future__ import annotations

import torch

from studio.figures.pruning import (curve_figure, head_heatmap, layer_bars, method_comparison,
                                    neuron_heatmap, preview_bars)


def test_neuron_heatmap_bins_wide_layers_and_marks_removed_share():
    scores = torch.rand(3, 1000)
    keep = {i: torch.ones(1000, dtype=torch.bool) for i in range(3)}
    keep[1][:250] = False  # a quarter of layer 1 goes, all in its first bins
    fig = neuron_heatmap(scores, keep, bins=100)
    importance, removed = fig.data
    assert len(importance.z[0]) == 100 and len(removed.z) == 3
    assert removed.z[1][0] == 1.0 and removed.z[1][-1] == 0.0 and sum(removed.z[0]) == 0
    assert abs(sum(removed.z[1]) / 100 - 0.25) < 1e-6
    assert "8%" in fig.layout.title.text  # 250 of 3000 neurons


def test_neuron_heatmap_keeps_narrow_layers_unbinned_and_handles_no_plan():
    fig = neuron_heatmap(torch.rand(4, 96), None, bins=128)
    assert len(fig.data[0].z[0]) == 96 and sum(map(sum, fig.data[1].z)) == 0


def test_head_heatmap_marks_groups_and_removed_heads():
    scores = torch.rand(2, 8)
    keep = {0: torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool),
            1: torch.ones(8, dtype=torch.bool)}
    fig = head_heatmap(scores, keep, group_size=4)
    assert fig.data[1].text[0][2] == "✕" and fig.data[1].text[0][0] == "" and "✕" not in fig.data[1].text[1]
    assert len(fig.layout.shapes) == 1  # one boundary between the two KV groups
    assert "2 KV groups of 4" in fig.layout.title.text and "2 of 16" in fig.layout.title.text


def test_layer_bars_colour_dropped_layers():
    fig = layer_bars(torch.tensor([0.3, 0.1, 0.2, 0.5]), [1, 2])
    colors = list(fig.data[0].marker.color)
    assert colors[1] == colors[2] != colors[0] == colors[3]
    assert "L1, L2" in fig.layout.title.text


def test_preview_bars_and_curves():
    result = {"perplexity": {"general": 40.0, "domain": 60.0},
              "baseline": {"general": 30.0, "domain": 20.0}}
    fig = preview_bars(result)
    assert list(fig.data[0].y) == [30.0, 20.0] and list(fig.data[1].y) == [40.0, 60.0]
    rows = [{"ratio": r, "method": m, "perplexity": {"general": 30 + 100 * r * k}}
            for k, m in ((1, "activation"), (2, "l2")) for r in (0.4, 0.0, 0.2)]
    fig = method_comparison(rows, baseline={"general": 30.0})
    assert len(fig.data) == 2 and list(fig.data[0].x) == [0.0, 0.2, 0.4]
    assert {t.name for t in fig.data} == {"activation · general", "l2 · general"}
    rows += [{**r, "set": None, "perplexity": {"domain": 1 + r["ratio"]}} for r in rows[:3]]
    fig = method_comparison(rows)
    lines = {t.name: t.line for t in fig.data}
    assert lines["activation · general"].color == lines["activation · domain"].color
    assert lines["activation · general"].dash != lines["activation · domain"].dash
    assert lines["activation · general"].color != lines["l2 · general"].color
    flat = curve_figure([{"ratio": 0.1, "perplexity": 31.0, "set": "domain"}])
    assert flat.data[0].name == "domain"


def test_empty_inputs_give_placeholders():
    for fig in (neuron_heatmap(torch.empty(0)), head_heatmap(torch.empty(0)), layer_bars([]),
                preview_bars(None), curve_figure([])):
        assert fig.layout.annotations  # a message instead of an empty chart
