"""Calibration statistics: one hooked pass over a data source, shared by the Activations and
Pruning tabs, computed once per (model fingerprint, source, tokens, block, seed) and kept on disk
(safetensors, with the metadata as JSON in its header).

One entry per key: an entry with the down_proj Gram matrix serves a request without it; a request
with it recomputes (and replaces) an entry without it. The Activations tab's statistics job asks for
the Gram whenever it is small (`gram_is_cheap`), so the Pruning tab's refit reuses that same pass.
"""
from __future__ import annotations

import hashlib
import json
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

GRAM_ROW_BLOCKS = 4  # the Gram's lower triangle in 4 row blocks: 5/8 of a full product's work
GRAM_AUTO_MAX_BYTES = 1 << 30  # the statistics job adds the Gram when it is at most this large
STATS_FORMAT = 1
TENSORS = ("act_abs_mean", "act_sq_mean", "head_norm_mean", "block_influence", "gram")


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


def stats_key(loaded: LoadedModel, source: str, tokens: int, block_len: int, seed: int | None) -> str:
    raw = f"{loaded.fingerprint()}|{source}|{tokens}|{block_len}|{seed}"
    return hashlib.sha1(raw.encode()).hexdigest()[:20]


def gram_bytes(loaded: LoadedModel) -> int:
    """Size of the float32 down_proj Gram matrices of every layer ([L, I, I])."""
    adapter, config = loaded.adapter, loaded.config
    return adapter.num_layers(config) * adapter.intermediate_size(config) ** 2 * 4


def gram_is_cheap(session, loaded: LoadedModel) -> bool:
    """Whether the statistics job should collect the Gram too (so pruning's refit reuses the pass):
    when it is small (≤ 1 GiB: the default model's is 283 MiB) and fits the memory budget."""
    size = gram_bytes(loaded)
    return size <= GRAM_AUTO_MAX_BYTES and session.has_room(size)


class _Accumulator:
    def __init__(self, n_layers: int, width: int, heads: int, with_gram: bool, on_cpu: bool = True):
        self.abs = torch.zeros(n_layers, width, dtype=torch.float64)
        self.sq = torch.zeros(n_layers, width, dtype=torch.float64)
        self.heads = torch.zeros(n_layers, heads, dtype=torch.float64)
        self.influence = torch.zeros(n_layers, dtype=torch.float64)
        self.gram = torch.zeros(n_layers, width, width, dtype=torch.float32) if with_gram else None
        # on CPU only the lower triangle is accumulated (in place), mirrored in finish()
        self.triangular = with_gram and on_cpu
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
            if self.triangular:
                self._lower_update(self.gram[i], flat.cpu())
            elif self.gram is not None:
                self.gram[i] += (flat.T @ flat).cpu()
        elif kind == "attn.head_out":
            self.heads[i] += x.norm(dim=-1).reshape(-1, x.shape[-2]).sum(0).double().cpu()
        elif kind == "resid_pre":
            self._resid_pre[i] = x
        elif kind == "resid_post":
            cos = F.cosine_similarity(self._resid_pre.pop(i), x, dim=-1)
            self.influence[i] += (1 - cos).sum().double().cpu()

    @staticmethod
    def _lower_update(gram: torch.Tensor, flat: torch.Tensor, blocks: int = GRAM_ROW_BLOCKS) -> None:
        """gram += flat.T @ flat on (a block superset of) the lower triangle, in place: row block
        [r0, r1) gets columns [0, r1). A symmetric rank-k update from plain matmuls (torch has no
        syrk; scipy's BLAS threads fight torch's own on a busy CPU)."""
        width = gram.shape[0]
        edges = [round(width * b / blocks) for b in range(blocks + 1)]
        for r0, r1 in zip(edges, edges[1:]):
            if r1 > r0:
                gram[r0:r1, :r1].addmm_(flat[:, r0:r1].T, flat[:, :r1])

    def finish(self, source: str) -> CalibrationStats:
        n = max(self.tokens, 1)
        if self.gram is not None:
            for g in self.gram:  # in place, one layer at a time: no second [L, I, I] copy
                if self.triangular:
                    g.tril_()
                    g.add_(g.tril(-1).T)
                g.div_(n)
        return CalibrationStats(
            source=source, tokens=self.tokens, act_abs_mean=(self.abs / n).float(),
            act_sq_mean=(self.sq / n).float(), head_norm_mean=(self.heads / n).float(),
            block_influence=(self.influence / n).float(),
            gram=self.gram)


@torch.no_grad()
def collect_stats(loaded: LoadedModel, blocks: torch.Tensor, source: str = "", with_gram: bool = False,
                  progress: Progress = null_progress, should_stop=lambda: False) -> CalibrationStats:
    """One hooked forward pass over the blocks; every statistic from the same tokens."""
    model, adapter, config = loaded.model, loaded.adapter, loaded.config
    n_layers = adapter.num_layers(config)
    acc = _Accumulator(n_layers, adapter.intermediate_size(config),
                       adapter.head_layout(config).num_heads, with_gram,
                       on_cpu=loaded.device.type == "cpu")
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


def save_stats(stats: CalibrationStats, path: Path) -> None:
    """Atomically: tensors as safetensors, the rest as JSON in the header (no pickle)."""
    from safetensors.torch import save_file

    tensors = {k: getattr(stats, k).contiguous() for k in TENSORS if getattr(stats, k) is not None}
    meta = {"format": STATS_FORMAT, "source": stats.source, "tokens": int(stats.tokens),
            "meta": stats.meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"studio.stats": json.dumps(meta)})
    tmp.replace(path)


def load_stats(path: Path) -> CalibrationStats:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["studio.stats"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    if meta.get("format") != STATS_FORMAT:
        raise ValueError(f"statistics format {meta.get('format')}, expected {STATS_FORMAT}")
    return CalibrationStats(source=meta["source"], tokens=int(meta["tokens"]), meta=meta["meta"],
                            **{k: tensors.get(k) for k in TENSORS})


def calibration_stats(session, source: str, tokens: int = 4096, block_len: int = 512,
                      seed: int | None = 0, with_gram: bool = False, role: str | None = None,
                      progress: Progress = null_progress, should_stop=lambda: False) -> CalibrationStats:
    """Cached statistics for the working model (or `role`): memory, then disk, then compute.
    An entry with the Gram serves a request without it; a stopped computation caches nothing."""
    loaded = session.get(role) if role else session.working()
    key = stats_key(loaded, source, tokens, block_len, seed)
    cached = session.cache.get(key)
    if cached is not None and (cached.gram is not None or not with_gram):
        return cached
    path = Path(session.path("stats", f"{key}.safetensors"))
    if path.is_file():
        try:
            stored = load_stats(path)
        except Exception as exc:  # a damaged or older file: computed again and replaced
            log.warning("ignoring statistics file %s (%s)", path, exc)
        else:
            if stored.gram is not None or not with_gram:
                session.cache[key] = stored
                return stored
    blocks = token_blocks(loaded.tokenizer, source, block_len, tokens, seed=seed,
                          progress=scaled(progress, 0.0, 0.05))
    stats = collect_stats(loaded, blocks, source, with_gram, scaled(progress, 0.05, 1.0),
                          should_stop)
    save_stats(stats, path)
    session.cache[key] = stats
    return stats
