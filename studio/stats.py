"""Calibration statistics: one hooked pass over a data source, shared by the Activations and
Pruning tabs, computed once per (model fingerprint, source, tokens, block, seed) and kept on disk.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.data import token_blocks
from studio.evaluation import batched, default_batch_size
from studio.hooks import hooks
from studio.models.loading import LoadedModel
from studio.progress import Progress, null_progress, scaled

log = logging.getLogger(__name__)


@dataclass
class CalibrationStats:
    """Per-layer statistics over `tokens` calibration tokens (all float32 on CPU).

    act_abs_mean  [L, I]   mean |act(gate)·up| per GLU neuron (Minitron activation importance)
    act_sq_mean   [L, I]   mean squared activation per neuron (‖X_i‖² / tokens)
    head_norm_mean[L, H]   mean L2 norm of each head's output before o_proj
    block_influence [L]    1 − cos(layer input, layer output), averaged over tokens
    gram          [L, I, I] or None: Σ xᵀx of down_proj inputs / tokens (for least-squares refit)
    """

    source: str
    tokens: int
    act_abs_mean: torch.Tensor
    act_sq_mean: torch.Tensor
    head_norm_mean: torch.Tensor
    block_influence: torch.Tensor
    gram: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def stats_key(loaded: LoadedModel, source: str, tokens: int, block_len: int, seed: int | None,
              with_gram: bool) -> str:
    raw = f"{loaded.fingerprint()}|{source}|{tokens}|{block_len}|{seed}|{int(with_gram)}"
    return hashlib.sha1(raw.encode()).hexdigest()[:20]


class _Accumulator:
    def __init__(self, n_layers: int, width: int, heads: int, with_gram: bool):
        self.abs = torch.zeros(n_layers, width, dtype=torch.float64)
        self.sq = torch.zeros(n_layers, width, dtype=torch.float64)
        self.heads = torch.zeros(n_layers, heads, dtype=torch.float64)
        self.influence = torch.zeros(n_layers, dtype=torch.float64)
        self.gram = torch.zeros(n_layers, width, width, dtype=torch.float32) if with_gram else None
        self.tokens = 0
        self._resid_pre: dict[int, torch.Tensor] = {}
        self.thread = threading.get_ident()  # forwards of other threads (a generation) are not data

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if threading.get_ident() != self.thread:
            return
        _, index, kind = name.split(".", 2)
        i = int(index)
        x = tensor.detach().float()
        if kind == "mlp.act":
            flat = x.reshape(-1, x.shape[-1])
            self.abs[i] += flat.abs().sum(0).double().cpu()
            self.sq[i] += flat.pow(2).sum(0).double().cpu()
            if self.gram is not None:
                self.gram[i] += (flat.T @ flat).cpu()
        elif kind == "attn.head_out":
            self.heads[i] += x.norm(dim=-1).reshape(-1, x.shape[-2]).sum(0).double().cpu()
        elif kind == "resid_pre":
            self._resid_pre[i] = x
        elif kind == "resid_post":
            cos = F.cosine_similarity(self._resid_pre.pop(i), x, dim=-1)
            self.influence[i] += (1 - cos).sum().double().cpu()

    def finish(self, source: str) -> CalibrationStats:
        n = max(self.tokens, 1)
        return CalibrationStats(
            source=source, tokens=self.tokens, act_abs_mean=(self.abs / n).float(),
            act_sq_mean=(self.sq / n).float(), head_norm_mean=(self.heads / n).float(),
            block_influence=(self.influence / n).float(),
            gram=None if self.gram is None else self.gram / n)


@torch.no_grad()
def collect_stats(loaded: LoadedModel, blocks: torch.Tensor, source: str = "", with_gram: bool = False,
                  progress: Progress = null_progress, should_stop=lambda: False) -> CalibrationStats:
    """One hooked forward pass over the blocks; every statistic from the same tokens."""
    model, adapter, config = loaded.model, loaded.adapter, loaded.config
    n_layers = adapter.num_layers(config)
    acc = _Accumulator(n_layers, adapter.intermediate_size(config),
                       adapter.head_layout(config).num_heads, with_gram)
    names = [f"layers.{i}.{k}" for i in range(n_layers)
             for k in ("resid_pre", "resid_post", "attn.head_out", "mlp.act")]
    device = loaded.device
    with hooks(model, adapter, names, acc):
        for start, batch in batched(blocks, default_batch_size(model)):
            if should_stop():
                from studio.jobs import JobStopped
                raise JobStopped()
            adapter.backbone(model)(input_ids=batch.to(device), use_cache=False)  # no LM head needed
            acc.tokens += batch.numel()
            done = start + batch.shape[0]
            progress(done / blocks.shape[0], f"Statistics: {done}/{blocks.shape[0]} blocks")
    stats = acc.finish(source)
    stats.meta = {"fingerprint": loaded.fingerprint(), "blocks": list(blocks.shape)}
    return stats


def calibration_stats(session, source: str, tokens: int = 4096, block_len: int = 512,
                      seed: int | None = 0, with_gram: bool = False, role: str | None = None,
                      progress: Progress = null_progress, should_stop=lambda: False) -> CalibrationStats:
    """Cached statistics for the working model (or `role`): memory, then disk, then compute."""
    loaded = session.get(role) if role else session.working()
    key = stats_key(loaded, source, tokens, block_len, seed, with_gram)
    if key in session.cache:
        return session.cache[key]
    if not with_gram:  # a cached run with the Gram matrix serves one without it
        richer = stats_key(loaded, source, tokens, block_len, seed, True)
        if richer in session.cache:
            return session.cache[richer]
    path = Path(session.path("stats", f"{key}.pt"))
    if path.is_file():
        stats = CalibrationStats(**torch.load(path, weights_only=True))
    else:
        blocks = token_blocks(loaded.tokenizer, source, block_len, tokens, seed=seed,
                              progress=scaled(progress, 0.0, 0.05))
        stats = collect_stats(loaded, blocks, source, with_gram, scaled(progress, 0.05, 1.0),
                              should_stop)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(stats.to_dict(), tmp)
        tmp.replace(path)
    session.cache[key] = stats
    return stats
