"""Activation analysis: what the model does per layer, neuron, head and token.

Prompt views (one short forward pass, no job): layer × token norms, attention pattern, logit lens,
prompt-pair comparison. Dataset views reuse `studio.stats.calibration_stats` (one hooked pass,
running sums, cached by model fingerprint/source/tokens, the same numbers the Pruning tab uses) and
run as session jobs with progress and stop.
"""
from __future__ import annotations

import logging
import threading

import numpy as np
import pandas as pd
import torch

from studio.errors import StudioError
from studio.hooks import hooks
from studio.models.loading import LoadedModel
from studio.progress import Progress, null_progress, scaled
from studio.stats import CalibrationStats, calibration_stats, gram_is_cheap

log = logging.getLogger(__name__)

# component label (UI dropdown) -> hook kind
COMPONENTS = {"residual stream": "resid_post", "attention output": "attn.out",
              "MLP output": "mlp.out", "MLP neurons (GLU act)": "mlp.act"}
MAX_PROMPT_TOKENS = 256
BLOCK_LEN = 512  # the Pruning tab's default block: same cache entry


# -- prompts ------------------------------------------------------------------------------
def encode(loaded: LoadedModel, prompt: str) -> torch.Tensor:
    """[1, T] token ids of a prompt (with the tokenizer's special tokens, e.g. Gemma's BOS)."""
    if not prompt or not prompt.strip():
        raise StudioError("The prompt is empty; type a sentence to analyse.")
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] > MAX_PROMPT_TOKENS:
        raise StudioError(f"The prompt has {ids.shape[1]} tokens, more than the {MAX_PROMPT_TOKENS} "
                          "a per-token view can show; shorten it.")
    return ids


def token_labels(tokenizer, ids: torch.Tensor) -> list[str]:
    """Readable token strings: leading spaces as '·', newlines as '⏎'."""
    out = []
    for i in ids.reshape(-1).tolist():
        text = tokenizer.decode([i])
        out.append(text.replace("\n", "⏎").replace(" ", "·") or f"<{i}>")
    return out


def _kind(component: str) -> str:
    if component in COMPONENTS.values():
        return component
    if component not in COMPONENTS:
        raise StudioError(f"Unknown component '{component}'; choose one of {', '.join(COMPONENTS)}.")
    return COMPONENTS[component]


def _check_layer(loaded: LoadedModel, layer: int, head: int | None = None) -> None:
    n_layers = loaded.adapter.num_layers(loaded.config)
    if not 0 <= int(layer) < n_layers:
        raise StudioError(f"Layer {layer} does not exist; pick 0 to {n_layers - 1}.")
    heads = loaded.adapter.head_layout(loaded.config).num_heads
    if head is not None and not 0 <= int(head) < heads:
        raise StudioError(f"Head {head} does not exist; pick 0 to {heads - 1}.")


@torch.no_grad()
def _trace(loaded: LoadedModel, ids: torch.Tensor, kind: str, reduce=None) -> torch.Tensor:
    """[L, T, ...] of one hook kind for a single prompt; `reduce` maps each [T, D] on its device."""
    model, adapter = loaded.model, loaded.adapter
    n_layers = adapter.num_layers(loaded.config)
    found: dict[int, torch.Tensor] = {}
    me = threading.get_ident()

    def keep(name: str, tensor: torch.Tensor) -> None:
        if threading.get_ident() != me:  # another thread's forward on the same model
            return
        x = tensor.detach()[0].float()
        found[int(name.split(".")[1])] = (reduce(x) if reduce else x).cpu()

    with hooks(model, adapter, [f"layers.{i}.{kind}" for i in range(n_layers)], keep):
        adapter.backbone(model)(input_ids=ids.to(loaded.device), use_cache=False)
    return torch.stack([found[i] for i in range(n_layers)])


def prompt_heatmap(loaded: LoadedModel, prompt: str, component: str = "residual stream") -> dict:
    """L2 norm of a component's output per layer per token: values [L, T]."""
    ids = encode(loaded, prompt)
    kind = _kind(component)
    values = _trace(loaded, ids, kind, reduce=lambda x: x.norm(dim=-1))
    return {"tokens": token_labels(loaded.tokenizer, ids), "values": values.numpy(),
            "component": component, "kind": kind}


@torch.no_grad()
def attention_pattern(loaded: LoadedModel, prompt: str, layer: int, head: int) -> dict:
    """Softmax attention weights [T, T] of one layer and query head (eager attention, switched
    on for this pass only and restored afterwards: run it where no other forward shares the model,
    e.g. inside a heavy session job, as the Activations tab does)."""
    _check_layer(loaded, layer, head)
    ids = encode(loaded, prompt)
    model, adapter = loaded.model, loaded.adapter
    attn = adapter.attention(adapter.layers(model)[int(layer)])
    found: dict[str, torch.Tensor] = {}
    me = threading.get_ident()

    def grab(module, args, output) -> None:
        if threading.get_ident() == me and isinstance(output, (tuple, list)) and len(output) > 1 and output[1] is not None:
            found["w"] = output[1][0, int(head)].detach().float().cpu()

    original = model.config._attn_implementation
    handle = attn.register_forward_hook(grab)
    try:
        if original != "eager":
            model.set_attn_implementation("eager")
        adapter.backbone(model)(input_ids=ids.to(loaded.device), use_cache=False)
    finally:
        handle.remove()
        if model.config._attn_implementation != original:
            model.set_attn_implementation(original)
    if "w" not in found:
        raise StudioError(f"{loaded.adapter.family} attention in layer {layer} returned no weights; "
                          "this architecture's attention cannot be inspected.")
    group = adapter.head_layout(loaded.config).group_size
    return {"tokens": token_labels(loaded.tokenizer, ids), "pattern": found["w"].numpy(),
            "layer": int(layer), "head": int(head), "kv_head": int(head) // group}


@torch.no_grad()
def logit_lens(loaded: LoadedModel, prompt: str, top_k: int = 5) -> dict:
    """Final norm + LM head applied to every layer's output: top-k next tokens and probabilities
    per layer per position (top_ids/top_probs [L, T, k]); the last layer equals the model."""
    ids = encode(loaded, prompt)
    model, config = loaded.model, loaded.config
    norm, head = loaded.adapter.final_norm(model), model.get_output_embeddings()
    cap = getattr(config, "final_logit_softcapping", None)
    resid = _trace(loaded, ids, "resid_post")  # [L, T, D] on CPU
    top_ids, top_probs = [], []
    for layer in resid:
        logits = head(norm(layer.to(loaded.device, loaded.dtype))).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        probs, idx = logits.softmax(-1).topk(top_k, dim=-1)
        top_ids.append(idx.cpu())
        top_probs.append(probs.cpu())
    top_ids, top_probs = torch.stack(top_ids), torch.stack(top_probs)
    decode = loaded.tokenizer.decode
    words = [[[decode([t]).replace("\n", "⏎") for t in pos] for pos in layer] for layer in top_ids.tolist()]
    return {"tokens": token_labels(loaded.tokenizer, ids), "top_ids": top_ids.numpy(),
            "top_probs": top_probs.numpy(), "top_tokens": words}


def logit_lens_frame(lens: dict, position: int = -1) -> pd.DataFrame:
    """One row per layer: the top-k predictions at one position (default: the last token)."""
    rows = []
    for layer, (words, probs) in enumerate(zip(lens["top_tokens"], lens["top_probs"])):
        row = {"layer": layer}
        for k, (w, p) in enumerate(zip(words[position], probs[position])):
            row[f"top{k + 1}"] = f"{w!r} {p:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def compare_prompts(loaded: LoadedModel, prompt_a: str, prompt_b: str,
                    component: str = "residual stream") -> dict:
    """Two prompts that differ in one attribute: per_layer [L] = mean |mean_a − mean_b| over the
    component's dimensions (token-averaged activations), dim_diff [L, D] signed, and token_diff
    [L, T] (norm of the per-token difference) when both prompts have the same token count."""
    kind = _kind(component)
    ids_a, ids_b = encode(loaded, prompt_a), encode(loaded, prompt_b)
    acts_a, acts_b = _trace(loaded, ids_a, kind), _trace(loaded, ids_b, kind)
    if acts_a.dim() == 4:  # head outputs: one vector per token
        acts_a, acts_b = acts_a.flatten(-2), acts_b.flatten(-2)
    dim_diff = acts_a.mean(1) - acts_b.mean(1)
    token_diff = (acts_a - acts_b).norm(dim=-1).numpy() if acts_a.shape == acts_b.shape else None
    return {"component": component, "kind": kind,
            "tokens_a": token_labels(loaded.tokenizer, ids_a),
            "tokens_b": token_labels(loaded.tokenizer, ids_b),
            "per_layer": dim_diff.abs().mean(-1).numpy(), "dim_diff": dim_diff.numpy(),
            "token_diff": token_diff}


# -- dataset statistics (jobs) ---------------------------------------------------------------
def dataset_stats(session, source: str, tokens: int = 4096, role: str | None = None,
                  progress: Progress = null_progress, should_stop=lambda: False,
                  with_gram: bool = False) -> CalibrationStats:
    """Neuron/head/layer statistics of the working model (or `role`) over `tokens` tokens of a
    source: the shared, cached calibration statistics (with_gram: also the down_proj Gram
    matrices that the Pruning tab's refit needs, from the same pass)."""
    tokens = int(tokens)
    if tokens <= 0:
        raise StudioError(f"Token budget {tokens} must be positive; use e.g. 4096.")
    return calibration_stats(session, source, tokens=tokens, block_len=min(BLOCK_LEN, tokens),
                             with_gram=with_gram, role=role, progress=progress,
                             should_stop=should_stop)


def stats_summary(stats: CalibrationStats, group_size: int = 1) -> dict:
    """A JSON-able overview: shapes, the layers that change the stream least (depth-pruning
    candidates), near-silent neurons and the weakest heads."""
    influence = stats.block_influence
    acts = stats.act_abs_mean
    quiet = acts < 0.01 * acts.mean(dim=1, keepdim=True)
    heads = stats.head_norm_mean
    weakest = torch.topk(heads.flatten(), min(5, heads.numel()), largest=False).indices.tolist()
    return {"source": stats.source, "tokens": int(stats.tokens),
            "neurons_shape": list(acts.shape), "heads_shape": list(heads.shape),
            "block_influence_shape": list(influence.shape), "kv_group_size": group_size,
            "least_influential_layers": torch.argsort(influence)[:5].tolist(),
            "most_influential_layers": torch.argsort(influence, descending=True)[:5].tolist(),
            "block_influence": [round(v, 5) for v in influence.tolist()],
            "quiet_neuron_fraction": round(float(quiet.float().mean()), 5),
            "weakest_heads": [[i // heads.shape[1], i % heads.shape[1]] for i in weakest]}


def start_stats_job(session, source: str, tokens: int = 4096, role: str | None = None):
    """Submit the statistics as a heavy session job; its result is `stats_summary`. When the
    down_proj Gram matrices are small (`stats.gram_is_cheap`) the same pass collects them, so the
    Pruning tab's importance and refit on this source and budget reuse it instead of a new pass."""
    loaded = session.get(role) if role else session.working()
    group = loaded.adapter.head_layout(loaded.config).group_size
    with_gram = gram_is_cheap(session, loaded)

    def work(job):
        stats = dataset_stats(session, source, tokens, role, job.progress, job.should_stop,
                              with_gram=with_gram)
        return stats_summary(stats, group)

    return session.submit(f"activation stats {tokens} tokens", work)


def compare_datasets(session, source_a: str, source_b: str, tokens: int = 4096,
                     role: str | None = None, progress: Progress = null_progress,
                     should_stop=lambda: False) -> dict:
    """Neuron statistics on two sources and their difference (b − a) of mean |activation|:
    positive = neurons the second (e.g. domain) source uses more."""
    a = dataset_stats(session, source_a, tokens, role, scaled(progress, 0.0, 0.5), should_stop)
    b = dataset_stats(session, source_b, tokens, role, scaled(progress, 0.5, 1.0), should_stop)
    diff = b.act_abs_mean - a.act_abs_mean
    top = torch.topk(diff.flatten(), min(10, diff.numel())).indices.tolist()
    width = diff.shape[1]
    return {"a": a, "b": b, "diff": diff.numpy(),
            "top_neurons": [{"layer": i // width, "neuron": i % width,
                             "a": round(float(a.act_abs_mean.flatten()[i]), 5),
                             "b": round(float(b.act_abs_mean.flatten()[i]), 5)} for i in top]}


def start_compare_job(session, source_a: str, source_b: str, tokens: int = 4096,
                      role: str | None = None):
    def work(job):
        result = compare_datasets(session, source_a, source_b, tokens, role, job.progress,
                                  job.should_stop)
        return {"source_a": source_a, "source_b": source_b, "tokens": int(tokens),
                "top_neurons": result["top_neurons"],
                "mean_abs_difference": round(float(np.abs(result["diff"]).mean()), 6)}

    return session.submit(f"compare datasets {tokens} tokens", work)


def stats_frame(stats: CalibrationStats, group_size: int = 1) -> pd.DataFrame:
    """Long table for CSV export: statistic, layer, index, kv_group, value."""
    frames = []
    for name, matrix in (("mlp_act_abs_mean", stats.act_abs_mean),
                         ("mlp_act_sq_mean", stats.act_sq_mean),
                         ("head_norm_mean", stats.head_norm_mean)):
        layers, width = matrix.shape
        frame = pd.DataFrame({"statistic": name, "layer": np.repeat(np.arange(layers), width),
                              "index": np.tile(np.arange(width), layers),
                              "value": matrix.numpy().reshape(-1)})
        frame["kv_group"] = frame["index"] // group_size if name == "head_norm_mean" else -1
        frames.append(frame)
    n = stats.block_influence.shape[0]
    frames.append(pd.DataFrame({"statistic": "block_influence", "layer": np.arange(n), "index": 0,
                                "value": stats.block_influence.numpy(), "kv_group": -1}))
    return pd.concat(frames, ignore_index=True)[["statistic", "layer", "index", "kv_group", "value"]]
