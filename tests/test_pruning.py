"""Pruning engine at session level: methods, previews, apply/recipe/replay, bad input, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, WIKI_TEST, need_data
from studio.errors import PruningError
from studio.evaluation import model_bytes, parameter_count, perplexity
from studio.importance import HEAD_METHODS, LAYER_METHODS, NEURON_METHODS, method_needs_data
from studio.pruning import (PruneConfig, apply, compute_importance, perplexity_curve, plan_for,
                            preview, replay_step)
from studio.session import Session
from studio.surgery import kept_layout, sliced_view_bytes
from studio.models.adapters import HeadLayout

CALIB = dict(calib_source="builtin:python-docs", calib_tokens=256, calib_block=128)


def test_every_method_scores_every_unit(tiny_session):
    session = tiny_session("qwen2")
    for name in NEURON_METHODS:
        scores = compute_importance(session, PruneConfig(mlp_ratio=0.25, method=name, **CALIB))
        assert scores.neurons.shape == (4, 96) and torch.isfinite(scores.neurons).all(), name
        assert scores.neurons.std() > 0, name
    for name in HEAD_METHODS:
        scores = compute_importance(session, PruneConfig(head_ratio=0.5, head_method=name, **CALIB))
        assert scores.heads.shape == (4, 4) and scores.heads.std() > 0, name
    drops = {}
    for name in LAYER_METHODS:
        config = PruneConfig(layers=2, layer_method=name, layer_list=[1, 3], **CALIB)
        scores = compute_importance(session, config)
        assert scores.layers.shape == (4,), name
        drops[name] = plan_for(session, config)[0].drop_layers
    assert drops["manual"] == [1, 3]
    assert method_needs_data("taylor") and not method_needs_data("ppm")


def test_preview_matches_applied_model_and_is_cached(tiny_session):
    session = tiny_session("llama")
    config = PruneConfig(mlp_ratio=0.3, head_ratio=0.5, layers=1, **CALIB)
    sources = {"general": "builtin:python-docs"}
    first = preview(session, config, sources, eval_tokens=256, block=128)
    keys = len(session.cache)
    started = time.perf_counter()
    again = preview(session, config, sources, eval_tokens=256, block=128)
    assert len(session.cache) == keys and again["perplexity"] == first["perplexity"]
    assert time.perf_counter() - started < 5
    plan, refit = plan_for(session, config)
    session.memory_limit_bytes = model_bytes(session.get().model) + 1  # no room for a sliced view
    assert not session.has_room(sliced_view_bytes(session.get(), plan, refit))
    by_masks = preview(session, config, sources, eval_tokens=256, block=128)
    session.memory_limit_bytes = None
    assert abs(by_masks["perplexity"]["general"] / first["perplexity"]["general"] - 1) < 1e-4
    assert first["params"] < first["params_base"] and 0 < first["flops_ratio"] < 1
    assert first["est_speedup"] > 1 and first["baseline"]["general"] != first["perplexity"]["general"]
    pruned = apply(session, config)
    blocks = session.cache[("prune-blocks", id(pruned.tokenizer), "builtin:python-docs", 256, 128,
                            None)]
    applied = perplexity(pruned.model, blocks)
    assert abs(applied / first["perplexity"]["general"] - 1) < 1e-3
    assert parameter_count(pruned.model) == first["params"]


def test_apply_records_recipe_and_replays(tiny_session, tmp_path, tiny_dir):
    session = tiny_session("gemma3")
    base_fp = session.get().fingerprint()
    config = PruneConfig(mlp_ratio=0.5, head_ratio=0.5, head_mode="per-group", **CALIB)
    pruned = apply(session, config)
    assert session.get("student") is pruned and session.get().fingerprint() == base_fp
    step = session.recipe[-1]
    assert step["step"] == "prune" and step["mlp_ratio"] == 0.5 and step["calib_tokens"] == 256
    assert pruned.history[-1]["step"] == "prune" and pruned.fingerprint() != base_fp

    other = Session(tmp_path / "replay", device="cpu")
    other.load(str(tiny_dir("gemma3")))
    out = replay_step(other, dict(step), lambda f, m="": None)
    assert out["params"] == parameter_count(pruned.model)
    for a, b in zip(pruned.model.parameters(), other.get("student").model.parameters()):
        assert torch.equal(a, b)


BAD = [
    (dict(mlp_ratio=1.0), "mlp_ratio"),
    (dict(head_ratio=-0.1), "head_ratio"),
    (dict(head_ratio=0.9, head_mode="groups"), "every head"),
    (dict(layers=4), "Cannot remove 4 of 4"),
    (dict(mlp_ratio=0.5, multiple_of=128), "leaves no neuron"),
    (dict(mlp_ratio=0.3, calib_source=""), "needs calibration data"),
    (dict(mlp_ratio=0.3, method="magic"), "Unknown method"),
    (dict(layers=1, layer_method="manual", layer_list=[7]), "do not exist"),
    (dict(head_ratio=0.5, head_mode="rows"), "Unknown head mode"),
]


@pytest.mark.parametrize("settings,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_and_changes_nothing(tiny_session, settings, message):
    session = tiny_session("llama")
    base = session.get()
    fp, steps, cached = base.fingerprint(), len(session.recipe), len(session.cache)
    with pytest.raises(PruningError, match=message):
        apply(session, PruneConfig(**{**CALIB, **settings}))
    assert not session.has("student") and base.fingerprint() == fp
    assert len(session.recipe) == steps and len(session.cache) == cached


def test_head_counts_must_divide_hidden_size():
    with pytest.raises(PruningError, match=r"do not divide hidden_size 36.*0/3, 2/3"):
        kept_layout(HeadLayout(12, 4, 3), 36, 1 / 3, "per-group")


def test_static_method_needs_no_data(tiny_session):
    session = tiny_session("mistral")
    pruned = apply(session, PruneConfig(mlp_ratio=0.5, method="ppm", calib_source="",
                                        head_ratio=0.5, head_method="weight"))
    assert pruned.config.intermediate_size == 48 and pruned.config.num_attention_heads == 2


def test_perplexity_curve_uses_masks(tiny_session):
    session = tiny_session("llama")
    base_fp = session.get().fingerprint()
    rows = perplexity_curve(session, PruneConfig(**CALIB), [0.0, 0.25, 0.5], "builtin:python-docs",
                            eval_tokens=128)
    assert [r["ratio"] for r in rows] == [0.0, 0.25, 0.5]
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    assert all(r["perplexity"] > 1 for r in rows)
    assert session.get().fingerprint() == base_fp and not session.has("student")


def _cli(args, tmp_path, timeout=300):
    env = {**os.environ, "STUDIO_QUIET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "studio", "prune", *args,
                           "--workspace", str(tmp_path / "ws")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def test_cli_prunes_tiny_model_end_to_end(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    proc = _cli(["--model", str(tiny_dir("qwen3")), "--calib", "builtin:python-docs",
                 "--calib-tokens", "256", "--calib-block", "128", "--mlp", "0.25", "--heads", "0.5",
                 "--head-mode", "groups", "--layers", "1", "--layer-method", "iterative_influence",
                 "--eval", "builtin:python-docs", "--eval-tokens", "256", "--out", "pruned"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["params_after"] < out["params_before"]
    assert abs(out["reloaded_perplexity"] / out["preview_perplexity"] - 1) < 1e-3
    assert (tmp_path / "pruned" / "model.safetensors").is_file()  # relative --out kept as given
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert model.config.num_hidden_layers == 3 and model.config.num_key_value_heads == 1

    bad = _cli(["--model", str(tiny_dir("qwen3")), "--mlp", "1.5", "--out", "x"], tmp_path)
    assert bad.returncode == 2 and "mlp_ratio" in bad.stderr and not (tmp_path / "x").exists()


def test_cli_default_model_quick(tmp_path):
    wiki = need_data(WIKI_TEST)
    proc = _cli(["--calib", str(wiki), "--calib-tokens", "512", "--mlp", "0.2", "--eval", str(wiki),
                 "--eval-tokens", "512", "--out", str(tmp_path / "smol")], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["params_after"] < 0.9 * out["params_before"]
    assert abs(out["reloaded_perplexity"] / out["preview_perplexity"] - 1) < 1e-3
    assert out["preview_perplexity"] < 2 * out["baseline_perplexity"]


def test_activation_statistics_are_reused_by_pruning(tiny_session, monkeypatch):
    """The default flow: the Activations tab's statistics job, then Pruning's importance (and the
    refit's Gram) on the same source and budget: one hooked pass over the data, not two."""
    from studio import activations as act
    from studio import stats as stats_module

    calls = []
    real = stats_module.collect_stats

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(stats_module, "collect_stats", counted)
    session = tiny_session("llama")
    job = act.start_stats_job(session, "builtin:python-docs", 1024)  # what the tab runs
    assert job.wait(120).status == "done", job.error
    assert calls == [(2, 512)]
    config = PruneConfig(mlp_ratio=0.3, layers=1, calib_source="builtin:python-docs",
                         calib_tokens=1024)  # the Pruning tab's defaults otherwise
    assert config.uses_refit() and config.calib_block == 512 and config.seed == 0
    scores = compute_importance(session, config)
    plan, refit = plan_for(session, config)  # the refit reads the Gram from the same entry
    assert scores.neurons.shape == (4, 96) and refit
    preview(session, config, {"general": "builtin:python-docs"}, eval_tokens=256, block=128)
    assert calls == [(2, 512)]  # no second statistics pass
