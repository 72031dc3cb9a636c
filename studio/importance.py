"""Importance scores for structured pruning: GLU neurons, attention heads and decoder layers.

Every method is one registry entry (the dropdowns read the dicts); higher score = more important.
A method gets an `ImportanceContext` that fetches calibration statistics and token blocks lazily,
so static weight scores never touch data.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from studio.hooks import hooks, pruning_masks
from studio.jobs import JobStopped
from studio.models.loading import LoadedModel
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)


@dataclass
class ImportanceContext:
    """What a method may use: the model, lazily fetched statistics and calibration blocks."""

    loaded: LoadedModel
    stats: Callable[[], object]          # -> studio.stats.CalibrationStats
    blocks: Callable[[], torch.Tensor]   # -> LongTensor [n, block] calibration tokens
    drop: int = 0                        # layers to remove (iterative layer methods)
    layer_list: list[int] | None = None  # manual layer choice
    progress: Progress = null_progress
    should_stop: Callable[[], bool] = lambda: False

    def check_stop(self) -> None:
        if self.should_stop():
            raise JobStopped()


@dataclass
class ImportanceScores:
    """Per-layer scores (higher = more important); a part is None when it was not needed."""

    neurons: torch.Tensor | None = None   # [L, I]
    heads: torch.Tensor | None = None     # [L, H]
    layers: torch.Tensor | None = None    # [L]
    meta: dict = field(default_factory=dict)


# -- GLU neurons ---------------------------------------------------------------------------
def _glu(ctx: ImportanceContext):
    adapter, model = ctx.loaded.adapter, ctx.loaded.model
    for layer in adapter.layers(model):
        gate, up, down = adapter.glu(layer)
        yield gate.weight.detach().float(), up.weight.detach().float(), down.weight.detach().float()


def _static(score: Callable) -> Callable:
    def method(ctx: ImportanceContext) -> torch.Tensor:
        return torch.stack([score(g, u, d).cpu() for g, u, d in _glu(ctx)])
    method.__doc__ = score.__doc__
    return method


def _peak_to_peak(w: torch.Tensor) -> torch.Tensor:
    return w.max(dim=1).values - w.min(dim=1).values


@_static
def ppm(gate, up, down):
    """Peak-to-peak magnitude of the neuron's gate and up rows."""
    return _peak_to_peak(gate) + _peak_to_peak(up)


@_static
def maw(gate, up, down):
    """Maximum absolute weight of the neuron's gate and up rows and down column."""
    return gate.abs().amax(1) + up.abs().amax(1) + down.abs().amax(0)


@_static
def vow(gate, up, down):
    """Variance of the neuron's gate and up weights."""
    return gate.var(dim=1) + up.var(dim=1)


@_static
def pon(gate, up, down):
    """Product of the L1 norms of the neuron's gate and up rows."""
    return gate.abs().sum(1) * up.abs().sum(1)


@_static
def l2(gate, up, down):
    """L2 norm of everything the neuron owns (gate row, up row, down column)."""
    return (gate.pow(2).sum(1) + up.pow(2).sum(1) + down.pow(2).sum(0)).sqrt()


def activation(ctx: ImportanceContext) -> torch.Tensor:
    """Minitron: mean |act(gate)·up| per neuron over the calibration tokens."""
    return ctx.stats().act_abs_mean.clone()


def activation_mix(ctx: ImportanceContext) -> torch.Tensor:
    """√(mean|x| · RMS x): the mean keeps broadly used neurons, the RMS keeps rarely but strongly
    firing ones. Measured (benchmarks/RESULTS.md) to beat either alone, and act_x_weight, on text
    unlike the calibration text."""
    stats = ctx.stats()
    return (stats.act_abs_mean * stats.act_sq_mean.sqrt()).sqrt()


def act_x_weight(ctx: ImportanceContext) -> torch.Tensor:
    """‖X_i‖·‖W_down[:, i]‖: the neuron's activation norm times the norm of what it writes."""
    stats = ctx.stats()
    x_norm = (stats.act_sq_mean * stats.tokens).sqrt()
    w_norm = torch.stack([d.norm(dim=0).cpu() for _, _, d in _glu(ctx)])
    return x_norm * w_norm


def taylor(ctx: ImportanceContext) -> torch.Tensor:
    """First-order Taylor: Σ over calibration tokens of |activation · ∂loss/∂activation|."""
    loaded = ctx.loaded
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.layers(model)
    blocks = ctx.blocks()
    acts: dict[int, torch.Tensor] = {}
    total = torch.zeros(len(layers), adapter.intermediate_size(loaded.config), dtype=torch.float64)

    def keep(i):
        def hook(module, args):
            acts[i] = args[0]
        return hook

    def need_grad(module, args, output):
        return output.requires_grad_(True)

    handles, flags = [], [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        handles.append(model.get_input_embeddings().register_forward_hook(need_grad))
        for i, layer in enumerate(layers):
            handles.append(adapter.glu(layer)[2].register_forward_pre_hook(keep(i)))
        for n in range(blocks.shape[0]):
            ctx.check_stop()
            batch = blocks[n:n + 1].to(loaded.device)
            with torch.enable_grad():
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                order = sorted(acts)
                grads = torch.autograd.grad(loss, [acts[i] for i in order])
            for i, g in zip(order, grads):
                a = acts[i].detach().float()
                total[i] += (a * g.float()).abs().reshape(-1, a.shape[-1]).sum(0).double().cpu()
            acts.clear()
            ctx.progress((n + 1) / blocks.shape[0], f"Taylor scores: {n + 1}/{blocks.shape[0]} blocks")
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return total.float()


NEURON_METHODS: dict[str, Callable] = {
    "activation_mix": activation_mix, "activation": activation, "act_x_weight": act_x_weight,
    "taylor": taylor,
    "ppm": ppm, "maw": maw, "vow": vow, "pon": pon, "l2": l2,
}


# -- attention heads -----------------------------------------------------------------------
def head_activation(ctx: ImportanceContext) -> torch.Tensor:
    """Mean L2 norm of each query head's output (before o_proj) over the calibration tokens."""
    return ctx.stats().head_norm_mean.clone()


def head_weight(ctx: ImportanceContext) -> torch.Tensor:
    """Static: ‖W_q rows of the head‖ · ‖W_o columns of the head‖ (Frobenius)."""
    adapter, model = ctx.loaded.adapter, ctx.loaded.model
    layout = adapter.head_layout(model.config)
    out = []
    for layer in adapter.layers(model):
        q, _, _, o = adapter.qkvo(layer)
        qn = q.weight.detach().float().view(layout.num_heads, layout.head_dim, -1).flatten(1).norm(dim=1)
        on = o.weight.detach().float().view(-1, layout.num_heads, layout.head_dim).transpose(0, 1)
        out.append((qn * on.flatten(1).norm(dim=1)).cpu())
    return torch.stack(out)


HEAD_METHODS: dict[str, Callable] = {"activation": head_activation, "weight": head_weight}


# -- decoder layers ------------------------------------------------------------------------
def block_influence(ctx: ImportanceContext) -> torch.Tensor:
    """One shot: 1 − cos(layer input, layer output), mean over calibration tokens."""
    return ctx.stats().block_influence.clone()


@torch.no_grad()
def masked_influence(loaded: LoadedModel, blocks: torch.Tensor, skip: list[int]) -> torch.Tensor:
    """Block influence of every layer with the `skip` layers passed through (inf for skipped)."""
    model, adapter = loaded.model, loaded.adapter
    n_layers = adapter.num_layers(loaded.config)
    sums = torch.zeros(n_layers, dtype=torch.float64)
    pre: dict[int, torch.Tensor] = {}

    def fn(name, x):
        i, kind = int(name.split(".")[1]), name.split(".", 2)[2]
        if kind == "resid_pre":
            pre[i] = x.detach().float()
        else:
            sums[i] += (1 - F.cosine_similarity(pre.pop(i), x.detach().float(), dim=-1)).sum().cpu()

    kept = [i for i in range(n_layers) if i not in skip]
    names = [f"layers.{i}.{k}" for i in kept for k in ("resid_pre", "resid_post")]
    with hooks(model, adapter, names, fn), pruning_masks(model, adapter, skip_layers=skip):
        for n in range(blocks.shape[0]):
            adapter.backbone(model)(input_ids=blocks[n:n + 1].to(loaded.device), use_cache=False)
    out = (sums / blocks.numel()).float()
    out[skip] = math.inf
    return out


def _greedy(ctx: ImportanceContext, measure: Callable[[list[int]], torch.Tensor], label: str):
    """Remove the lowest-scoring layer, re-measure on the masked model, repeat `drop` times.
    Removed layers score below every kept one, in removal order."""
    removed: list[int] = []
    scores = measure([])
    for step in range(ctx.drop):
        ctx.check_stop()
        ctx.progress(step / max(ctx.drop, 1), f"{label}: choosing layer {step + 1}/{ctx.drop}")
        scores = measure(removed) if step else scores
        candidates = scores.clone()
        candidates[removed] = math.inf
        removed.append(int(candidates.argmin()))
    final = scores.clone()
    finite = final[torch.isfinite(final)]
    floor = float(finite.min()) if finite.numel() else 0.0
    for rank, i in enumerate(removed):
        final[i] = floor - (len(removed) - rank)
    final[~torch.isfinite(final)] = floor  # only when nothing was measured
    return final


def iterative_influence(ctx: ImportanceContext) -> torch.Tensor:
    """Remove the layer of lowest block influence, recompute influence on the masked model, repeat."""
    blocks = ctx.blocks()
    return _greedy(ctx, lambda skip: masked_influence(ctx.loaded, blocks, skip), "Iterative influence")


PPL_SAMPLE_BLOCKS = 2


PPL_RETEST = 6  # after the first removal only the best few candidates are re-tested


def ppl_increase(ctx: ImportanceContext) -> torch.Tensor:
    """Perplexity increase when each layer is skipped, on the first few calibration blocks; greedy:
    after each removal the PPL_RETEST most promising layers are re-tested on the masked model
    (every layer once, then a handful: ~40 passes for 3 of 30 layers instead of ~90)."""
    from studio.evaluation import perplexity

    loaded = ctx.loaded
    blocks = ctx.blocks()[:PPL_SAMPLE_BLOCKS]
    n_layers = loaded.adapter.num_layers(loaded.config)
    last: list[torch.Tensor] = []

    def measure(skip: list[int]) -> torch.Tensor:
        with pruning_masks(loaded.model, loaded.adapter, skip_layers=skip):
            base = perplexity(loaded.model, blocks)
        candidates = range(n_layers)
        if last:
            previous = last[-1].clone()
            previous[skip] = math.inf
            candidates = previous.argsort()[:PPL_RETEST].tolist()
        out = torch.full((n_layers,), math.inf)
        for j in candidates:
            if j in skip:
                continue
            ctx.check_stop()
            with pruning_masks(loaded.model, loaded.adapter, skip_layers=skip + [j]):
                out[j] = perplexity(loaded.model, blocks) - base
        if last:  # layers not re-tested keep their earlier score, ranked after the re-tested
            untested = ~torch.isfinite(out)
            out[untested] = last[-1][untested] + out[torch.isfinite(out)].max().clamp(min=0)
        last.append(out)
        return out

    return _greedy(ctx, measure, "Perplexity test")


def manual(ctx: ImportanceContext) -> torch.Tensor:
    """The user's choice: listed layers score lowest."""
    n_layers = ctx.loaded.adapter.num_layers(ctx.loaded.config)
    scores = torch.ones(n_layers)
    scores[list(ctx.layer_list or [])] = -1.0
    return scores


LAYER_METHODS: dict[str, Callable] = {
    "block_influence": block_influence, "iterative_influence": iterative_influence,
    "ppl": ppl_increase, "manual": manual,
}

DATA_METHODS = {"activation_mix", "activation", "act_x_weight", "taylor", "block_influence",
                "iterative_influence", "ppl"}
EXPENSIVE_METHODS = {"taylor", "iterative_influence", "ppl"}


def method_needs_data(name: str) -> bool:
    """True when the method reads calibration data (it cannot run without a source)."""
    return name in DATA_METHODS
