"""Activation analysis engine, figures and CLI: checked against hand computations on a tiny model
and for shapes/behaviour on the default SmolLM2."""
import json
import math
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from studio import activations as act
from studio.data import token_blocks
from studio.figures import activations as figs
from studio.jobs import DONE, STOPPED
from studio.session import Session
from studio.stats import calibration_stats

SOURCE = "builtin:python-docs"
PROMPT = "The capital of France is Paris, and the capital of Italy is"


# -- a llama layer 0 by hand, from the weights only ---------------------------------------------
def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x, theta):
    dim, positions = x.shape[-1], torch.arange(x.shape[-2]).float()
    freqs = positions[:, None] / theta ** (torch.arange(0, dim, 2).float() / dim)[None]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    x1, x2 = x[..., :dim // 2], x[..., dim // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


@torch.no_grad()
def layer0_by_hand(model, ids):
    cfg, sd = model.config, {k: v.float() for k, v in model.state_dict().items()}
    heads, kv, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    p, eps, theta = "model.layers.0.", cfg.rms_norm_eps, cfg.rope_parameters["rope_theta"]
    x_in = sd["model.embed_tokens.weight"][ids]  # [B, T, D]
    b, t, _ = x_in.shape
    x = _rms(x_in, sd[p + "input_layernorm.weight"], eps)
    q = (x @ sd[p + "self_attn.q_proj.weight"].T).view(b, t, heads, dh).transpose(1, 2)
    k = (x @ sd[p + "self_attn.k_proj.weight"].T).view(b, t, kv, dh).transpose(1, 2)
    v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(b, t, kv, dh).transpose(1, 2)
    q, k = _rope(q, theta), _rope(k, theta)
    k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    probs = scores.softmax(-1)
    head_out = (probs @ v).transpose(1, 2)  # [B, T, H, Dh]
    h = x_in + head_out.reshape(b, t, -1) @ sd[p + "self_attn.o_proj.weight"].T
    y = _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
    glu = F.silu(y @ sd[p + "mlp.gate_proj.weight"].T) * (y @ sd[p + "mlp.up_proj.weight"].T)
    out = h + glu @ sd[p + "mlp.down_proj.weight"].T
    return {"resid_pre": x_in, "probs": probs, "head_out": head_out, "act": glu, "resid_post": out}


def test_hook_statistics_equal_hand_computation(tiny_session):
    session = tiny_session("llama")
    loaded = session.get()
    stats = act.dataset_stats(session, SOURCE, 128)
    blocks = token_blocks(loaded.tokenizer, SOURCE, 128, 128, seed=0)
    ref = layer0_by_hand(loaded.model, blocks)
    n = blocks.numel()
    assert stats.tokens == n and stats.act_abs_mean.shape == (4, 96)
    torch.testing.assert_close(stats.act_abs_mean[0], ref["act"].abs().reshape(n, -1).mean(0),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats.act_sq_mean[0], ref["act"].pow(2).reshape(n, -1).mean(0),
                               rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(stats.head_norm_mean[0],
                               ref["head_out"].norm(dim=-1).reshape(n, -1).mean(0), rtol=1e-4, atol=1e-6)
    influence = (1 - F.cosine_similarity(ref["resid_pre"], ref["resid_post"], dim=-1)).mean()
    assert stats.block_influence[0].item() == pytest.approx(influence.item(), rel=1e-4, abs=1e-6)


def test_prompt_views_equal_hand_computation(tiny_session):
    loaded = tiny_session("llama").get()
    ids = act.encode(loaded, PROMPT)
    ref = layer0_by_hand(loaded.model, ids)
    heat = act.prompt_heatmap(loaded, PROMPT, "residual stream")
    assert heat["values"].shape == (4, ids.shape[1]) and len(heat["tokens"]) == ids.shape[1]
    np.testing.assert_allclose(heat["values"][0], ref["resid_post"][0].norm(dim=-1).numpy(), rtol=1e-4)
    before = loaded.model.config._attn_implementation
    pattern = act.attention_pattern(loaded, PROMPT, 0, 3)
    assert loaded.model.config._attn_implementation == before  # restored
    np.testing.assert_allclose(pattern["pattern"], ref["probs"][0, 3].numpy(), atol=1e-5)
    assert pattern["kv_head"] == 1


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_prompt_views_on_other_families(tiny_session, family):
    loaded = tiny_session(family).get()
    pattern = act.attention_pattern(loaded, PROMPT, 3, 1)["pattern"]
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
    assert np.triu(pattern, 1).max() == 0  # causal
    lens = act.logit_lens(loaded, PROMPT, top_k=3)
    with torch.no_grad():
        logits = loaded.model(input_ids=act.encode(loaded, PROMPT)).logits[0].float()
    assert (lens["top_ids"][-1, :, 0] == logits.argmax(-1).numpy()).all()
    np.testing.assert_allclose(lens["top_probs"][-1, :, 0], logits.softmax(-1).max(-1).values.numpy(),
                               rtol=1e-4)


def test_bad_inputs_are_one_sentence(tiny_session):
    loaded = tiny_session("llama").get()
    with pytest.raises(act.StudioError, match="pick 0 to 3"):
        act.attention_pattern(loaded, PROMPT, 7, 0)
    with pytest.raises(act.StudioError, match="empty"):
        act.prompt_heatmap(loaded, "  ")
    with pytest.raises(act.StudioError, match="choose one of"):
        act.prompt_heatmap(loaded, PROMPT, "gate")


def test_stats_job_stops(tiny_session):
    session = tiny_session("llama")
    job = act.start_stats_job(session, SOURCE, 65_536)
    job.request_stop()
    assert job.wait(120).status == STOPPED


def counting(monkeypatch):
    """Count studio.stats.collect_stats calls (each one is a hooked pass over the data)."""
    from studio import stats as stats_module

    calls = []
    real = stats_module.collect_stats

    def wrapper(*args, **kwargs):
        calls.append(kwargs.get("with_gram", args[3] if len(args) > 3 else False))
        return real(*args, **kwargs)

    monkeypatch.setattr(stats_module, "collect_stats", wrapper)
    return calls


def test_stats_job_stopped_mid_run_caches_nothing(tiny_session, monkeypatch):
    """Stop requested from the first progress update of the hooked pass: the job ends stopped and
    the partial sums are neither cached in memory nor written to disk."""
    from studio.jobs import Job

    session = tiny_session("llama")
    seen, real_progress = [], Job.progress

    def progress(job, fraction, message=""):
        real_progress(job, fraction, message)
        if message.startswith("Statistics:"):
            seen.append((fraction, message))
            job.request_stop()

    monkeypatch.setattr(Job, "progress", progress)
    calls = counting(monkeypatch)
    job = act.start_stats_job(session, SOURCE, 8192)
    assert job.wait(120).status == STOPPED and job.message == "stopped" and job.started
    assert len(seen) == 1 and 0 < seen[0][0] < 1  # one batch done, then stopped
    assert re.fullmatch(r"Statistics: \d+/16 blocks", seen[0][1])
    assert job.fraction < 1 and calls == [True]
    assert not [v for v in session.cache.values() if hasattr(v, "act_abs_mean")]
    stats_dir = session.path("stats")
    assert not stats_dir.exists() or not [p for p in stats_dir.iterdir() if p.suffix != ".tmp"]
    monkeypatch.setattr(Job, "progress", real_progress)
    stats = act.dataset_stats(session, SOURCE, 8192)  # computed afresh, in full
    assert len(calls) == 2 and stats.tokens == 8192


def test_gram_equals_hand_computation(tiny_session):
    session = tiny_session("llama")
    loaded = session.get()
    stats = act.dataset_stats(session, SOURCE, 128, with_gram=True)
    blocks = token_blocks(loaded.tokenizer, SOURCE, 128, 128, seed=0)
    glu = layer0_by_hand(loaded.model, blocks)["act"].reshape(blocks.numel(), -1)
    assert stats.gram.shape == (4, 96, 96)
    torch.testing.assert_close(stats.gram[0], glu.T @ glu / blocks.numel(), rtol=1e-4, atol=1e-6)
    assert torch.equal(stats.gram, stats.gram.transpose(1, 2))  # mirrored exactly
    assert act.dataset_stats(session, SOURCE, 128) is stats  # the richer entry serves a plain request


def test_stats_persist_on_disk(tiny_session, monkeypatch):
    """Computed once: a fresh session on the same workspace reads the safetensors file (no pickle)
    instead of a new pass, with equal values, the Gram included."""
    from safetensors.torch import load_file

    first = tiny_session("llama")
    calls = counting(monkeypatch)
    job = act.start_stats_job(first, SOURCE, 1024)
    assert job.wait(120).status == DONE and calls == [True]  # tiny model: the Gram comes along
    computed = act.dataset_stats(first, SOURCE, 1024)
    files = sorted(first.path("stats").iterdir())
    assert [p.suffix for p in files] == [".safetensors"]
    assert set(load_file(files[0])) == {"act_abs_mean", "act_sq_mean", "head_norm_mean",
                                        "block_influence", "gram"}
    fresh = tiny_session("llama")
    assert fresh is not first and fresh.workspace == first.workspace and not fresh.cache
    loaded = act.dataset_stats(fresh, SOURCE, 1024)
    again = calibration_stats(fresh, SOURCE, tokens=1024, block_len=512, with_gram=True)
    assert calls == [True] and again is loaded  # read from disk, no second pass
    assert loaded is not computed and loaded.source == SOURCE and loaded.tokens == 1024
    assert loaded.meta == computed.meta
    for name in ("act_abs_mean", "act_sq_mean", "head_norm_mean", "block_influence", "gram"):
        assert torch.equal(getattr(loaded, name), getattr(computed, name)), name
    files[0].write_bytes(files[0].read_bytes()[:1000])  # a damaged file is computed again
    redone = act.dataset_stats(tiny_session("llama"), SOURCE, 1024)
    assert len(calls) == 2 and torch.equal(redone.act_abs_mean, computed.act_abs_mean)
    assert load_file(files[0])["act_abs_mean"].shape == (4, 96)  # and replaced


def test_dataset_comparison_is_b_minus_a(tiny_session, tmp_path):
    """compare_datasets' difference is the second source's mean |act| minus the first's, checked
    against an independent pass per source (and layer 0 by hand)."""
    from studio.stats import collect_stats

    session = tiny_session("llama")
    loaded = session.get()
    domain = tmp_path / "domain.txt"
    domain.write_text("Patients with type 2 diabetes received metformin and insulin daily. " * 60)
    result = act.compare_datasets(session, SOURCE, str(domain), tokens=256)
    ref = {}
    for name, spec in (("a", SOURCE), ("b", str(domain))):
        blocks = token_blocks(loaded.tokenizer, spec, 256, 256, seed=0)
        ref[name] = collect_stats(loaded, blocks).act_abs_mean
        by_hand = layer0_by_hand(loaded.model, blocks)["act"].abs().reshape(blocks.numel(), -1).mean(0)
        torch.testing.assert_close(ref[name][0], by_hand, rtol=1e-4, atol=1e-6)
    expected = (ref["b"] - ref["a"]).numpy()
    assert result["diff"].shape == (4, 96) and np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(result["diff"], expected, rtol=1e-5, atol=1e-6)
    top = result["top_neurons"]
    assert len(top) == 10 and top[0]["b"] - top[0]["a"] == pytest.approx(expected.max(), abs=2e-5)
    for row in top:
        assert row["a"] == pytest.approx(float(ref["a"][row["layer"], row["neuron"]]), abs=1e-5)
        assert row["b"] == pytest.approx(float(ref["b"][row["layer"], row["neuron"]]), abs=1e-5)


# -- the default model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_session(default_model, tmp_path_factory):
    session = Session(tmp_path_factory.mktemp("act-ws"), device="cpu")
    session.set_model("base", default_model)
    return session


@pytest.fixture(scope="module")
def default_job(default_session):
    return act.start_stats_job(default_session, SOURCE, 4096).wait(900)


def test_default_model_statistics_shapes(default_session, default_job):
    assert default_job.status == DONE, default_job.error
    summary = default_job.result
    assert summary["tokens"] == 4096 and summary["neurons_shape"] == [30, 1536]
    assert summary["heads_shape"] == [30, 9] and len(summary["block_influence"]) == 30
    stats = act.dataset_stats(default_session, SOURCE, 4096)  # cached: no second pass
    assert stats is calibration_stats(default_session, SOURCE, tokens=4096, block_len=512)
    assert stats.act_abs_mean.shape == (30, 1536) and stats.head_norm_mean.shape == (30, 9)
    assert stats.block_influence.shape == (30,) and (stats.block_influence > 0).all()
    frame = act.stats_frame(stats, group_size=3)
    assert len(frame) == 2 * 30 * 1536 + 30 * 9 + 30
    assert set(frame.loc[frame.statistic == "head_norm_mean", "kv_group"]) == {0, 1, 2}


def test_identical_prompts_compare_exactly_zero(default_model):
    for component in ("residual stream", "MLP neurons (GLU act)"):
        same = act.compare_prompts(default_model, PROMPT, PROMPT, component)
        assert (same["per_layer"] == 0).all() and (same["token_diff"] == 0).all()
        assert (same["dim_diff"] == 0).all()
    pair = act.compare_prompts(default_model, "The doctor said he was tired",
                               "The doctor said she was tired")
    assert pair["per_layer"].min() > 0 and pair["token_diff"].shape == (30, 6)
    assert np.abs(pair["token_diff"][:, :3]).max() < 1e-3 * pair["token_diff"][:, 3].mean()


def test_logit_lens_last_layer_is_the_model(default_model):
    lens = act.logit_lens(default_model, "The capital of France is")
    assert lens["top_tokens"][-1][-1][0].strip() == "Paris"
    assert lens["top_probs"].shape == (30, 5, 5)
    table = act.logit_lens_frame(lens)
    assert list(table.columns) == ["layer", "top1", "top2", "top3", "top4", "top5"] and len(table) == 30


def test_a_figure_for_every_view(default_model, default_session, default_job, tmp_path):
    stats = act.dataset_stats(default_session, SOURCE, 4096)
    views = {
        "heatmap": figs.prompt_heatmap_figure(act.prompt_heatmap(default_model, PROMPT, "MLP output")),
        "neurons": figs.neuron_heatmap(stats.act_abs_mean, sort=True),
        "heads": figs.head_heatmap(stats.head_norm_mean, group_size=3),
        "attention": figs.attention_figure(act.attention_pattern(default_model, PROMPT, 10, 4)),
        "influence": figs.influence_figure(stats.block_influence),
        "lens": figs.logit_lens_figure(act.logit_lens(default_model, PROMPT)),
        "pair": figs.pair_figure(act.compare_prompts(default_model, PROMPT, PROMPT + " Rome")),
        "datasets": figs.dataset_diff_figure(stats.act_abs_mean - stats.act_abs_mean.flip(0), "a", "b"),
    }
    for name, fig in views.items():
        assert isinstance(fig, go.Figure) and fig.data, name
    assert len([s for s in views["heads"].layout.shapes if s.type == "line"]) == 2  # 3 KV groups
    assert views["neurons"].data[0].z.shape == (30, 512)  # 1536 neurons: bins of 3, said so
    assert "binned: 3 neurons per column" in views["neurons"].layout.title.text
    assert "per dimension" in views["pair"].layout.annotations[1].text  # prompts differ in length
    path = tmp_path / "lens.html"
    views["lens"].write_html(path)
    assert path.stat().st_size > 1000


def test_wide_model_figure_is_binned():
    fig = figs.neuron_heatmap(np.random.default_rng(0).random((32, 14336), dtype=np.float32))
    assert fig.data[0].z.shape == (32, 512)
    assert "28 neurons per column" in fig.layout.title.text and "bins of 28" in fig.layout.xaxis.title.text
    assert fig.layout.height <= 1100


def test_cli_writes_statistics_and_figures(tiny_dir, tmp_path):
    from tests.test_cli import studio

    other = tmp_path / "domain.txt"
    other.write_text("Patients with diabetes received insulin and metformin daily. " * 40)
    out = tmp_path / "out"
    run = studio("activations", "--model", str(tiny_dir("llama")), "--text", SOURCE,
                 "--max-tokens", "256", "--out", str(out), "--compare-text", str(other),
                 "--prompt", PROMPT, "--layer", "1", "--head", "2", "--workspace", str(tmp_path / "ws"))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["neurons_shape"] == [4, 96] and summary["tokens"] == 256
    index = json.loads((out / "index.json").read_text())
    for name in ("statistics", "csv", "neurons", "heads", "block_influence", "dataset_difference",
                 "prompt_heatmap", "logit_lens", "attention"):
        assert (out / index["files"][name]).is_file(), name
    from safetensors.torch import load_file
    assert load_file(out / "statistics.safetensors")["head_norm_mean"].shape == (4, 4)
