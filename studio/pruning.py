"""Session-level pruning: importance (cached), live previews (sliced views or masks), apply,
recipe replay, perplexity curves and saving. Built on studio.importance (scores) and studio.surgery (plans).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from studio.data import token_blocks
from studio.errors import PruningError
from studio.evaluation import parameter_count, perplexity
from studio.heap import return_freed_heap
from studio.importance import (EXPENSIVE_METHODS, HEAD_METHODS, LAYER_METHODS, NEURON_METHODS,
                               ImportanceContext, ImportanceScores, method_needs_data)
from studio.models.loading import LoadedModel
from studio.progress import Progress, null_progress, scaled
from studio.stats import calibration_stats
from studio.surgery import (PruningPlan, apply_plan, depth_cross, kept_layout, kept_width,
                            layer_matmul_params, make_plan, masked, planned_params, refit_weights,
                            refit_solver, sliced_view, sliced_view_bytes)

log = logging.getLogger(__name__)

DEFAULT_RIDGE = 0.3
DEFAULT_NEURON_METHOD = "activation_mix"

__all__ = ["PruneConfig", "NEURON_METHODS", "HEAD_METHODS", "LAYER_METHODS", "method_needs_data",
           "ImportanceScores", "PruningPlan", "compute_importance", "make_plan", "plan_for",
           "preview", "apply", "replay_step", "perplexity_curve", "save_pruned"]


@dataclass
class PruneConfig:
    mlp_ratio: float = 0.0
    head_ratio: float = 0.0
    head_mode: str = "per-group"
    layers: int = 0
    layer_method: str = "block_influence"
    layer_list: list[int] | None = None
    method: str = DEFAULT_NEURON_METHOD
    head_method: str = "activation"
    reconstruct: bool = True
    ridge: float = DEFAULT_RIDGE
    multiple_of: int = 1
    calib_source: str = "builtin:python-docs"
    calib_tokens: int = 4096
    calib_block: int = 512
    seed: int = 0
    extra: dict = field(default_factory=dict)  # room for UI-only settings; ignored by the engine

    @classmethod
    def from_dict(cls, settings: dict) -> "PruneConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})

    def has_data(self) -> bool:
        return bool(self.calib_source) and self.calib_tokens > 0

    def uses_refit(self) -> bool:
        """Least-squares refit of down_proj: for pruned neurons, and for the layer before each
        run of removed layers (the depth refit)."""
        return self.reconstruct and (self.mlp_ratio > 0 or self.layers > 0) and self.has_data()

    def validate(self, loaded: LoadedModel) -> None:
        """PruningError (one sentence, the offending values) for any setting that cannot work."""
        adapter, cfg = loaded.adapter, loaded.config
        for name in ("mlp_ratio", "head_ratio"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise PruningError(f"{name} must be in [0, 1) but is {value}; pick a fraction like 0.3.")
        for name, registry in (("method", NEURON_METHODS), ("head_method", HEAD_METHODS),
                               ("layer_method", LAYER_METHODS)):
            if getattr(self, name) not in registry:
                raise PruningError(f"Unknown {name} '{getattr(self, name)}'; choose one of "
                                   f"{', '.join(registry)}.")
        if self.multiple_of < 1:
            raise PruningError(f"multiple_of must be at least 1 but is {self.multiple_of}.")
        if self.ridge < 0:
            raise PruningError(f"ridge must be zero or positive but is {self.ridge}.")
        n_layers = adapter.num_layers(cfg)
        if self.layer_method == "manual" and self.layers:
            chosen = self.layer_list or []
            bad = [i for i in chosen if not 0 <= int(i) < n_layers]
            if bad:
                raise PruningError(f"Layers {bad} do not exist; pick layers from 0 to {n_layers - 1}.")
            if len(set(chosen)) != self.layers:
                raise PruningError(f"layers={self.layers} but the manual list {sorted(set(chosen))} "
                                   f"names {len(set(chosen))}; list exactly the layers to remove.")
        if not 0 <= self.layers < n_layers:
            raise PruningError(f"Cannot remove {self.layers} of {n_layers} layers; keep at least one "
                               f"(0 to {n_layers - 1}).")
        if self.mlp_ratio > 0:
            kept_width(adapter.intermediate_size(cfg), self.mlp_ratio, self.multiple_of)
        if self.head_ratio > 0:
            kept_layout(adapter.head_layout(cfg), cfg.hidden_size, self.head_ratio, self.head_mode)
        if not self.has_data():
            for active, name in ((self.mlp_ratio > 0, self.method),
                                 (self.head_ratio > 0, self.head_method),
                                 (self.layers > 0, self.layer_method)):
                if active and method_needs_data(name):
                    raise PruningError(f"Method '{name}' needs calibration data but no source is set; "
                                       "choose a calibration source or a static method.")


def _calib_blocks(session, loaded: LoadedModel, source: str, tokens: int, block: int,
                  seed: int | None) -> torch.Tensor:
    """Tokenised blocks, cached in session.cache (previews re-use them)."""
    key = ("prune-blocks", id(loaded.tokenizer), source, tokens, block, seed)
    if key not in session.cache:
        session.cache[key] = token_blocks(loaded.tokenizer, source, block, tokens, seed=seed)
    return session.cache[key]


def _needed(config: PruneConfig, ratio: float, method: str) -> bool:
    """Compute a part when it is used, or when it is cheap (free with the statistics)."""
    if ratio > 0:
        return True
    if method_needs_data(method):
        return config.has_data() and method not in EXPENSIVE_METHODS
    return method != "manual"


def compute_importance(session, config: PruneConfig, progress: Progress = null_progress,
                       should_stop=lambda: False) -> ImportanceScores:
    """Scores of the working model for the config's methods, cached per part in session.cache."""
    loaded = session.working()
    config.validate(loaded)
    fp = loaded.fingerprint()
    data = (config.calib_source, config.calib_tokens, config.calib_block, config.seed)

    def stats():
        return calibration_stats(session, config.calib_source, config.calib_tokens,
                                 config.calib_block, config.seed, with_gram=config.uses_refit(),
                                 progress=scaled(progress, 0.0, 0.5), should_stop=should_stop)

    def blocks():
        return _calib_blocks(session, loaded, *data)

    parts = {"neurons": (config.mlp_ratio, config.method, NEURON_METHODS, ()),
             "heads": (config.head_ratio, config.head_method, HEAD_METHODS, ()),
             "layers": (config.layers, config.layer_method, LAYER_METHODS,
                        (config.layers, tuple(config.layer_list or ())))}
    out = ImportanceScores(meta={"method": config.method, "head_method": config.head_method,
                                 "layer_method": config.layer_method, "source": config.calib_source,
                                 "tokens": config.calib_tokens, "seed": config.seed, "fingerprint": fp})
    for n, (part, (amount, method, registry, extra)) in enumerate(parts.items()):
        if not _needed(config, amount, method):
            continue
        if method == "manual" or (part == "layers" and method not in EXPENSIVE_METHODS):
            extra = extra if method == "manual" else ()
        key = ("prune-importance", fp, part, method, data if method_needs_data(method) else None, extra)
        if key not in session.cache:
            ctx = ImportanceContext(loaded, stats, blocks, drop=config.layers,
                                    layer_list=config.layer_list,
                                    progress=scaled(progress, 0.5 + n / 6, 0.5 + (n + 1) / 6),
                                    should_stop=should_stop)
            session.cache[key] = registry[method](ctx)
        setattr(out, part, session.cache[key])
    if config.uses_refit():  # what the refit needs, computed within this job
        progress(0.95, "Preparing the least-squares refit")
        _refit_solvers(session, loaded, config, stats().gram, out.neurons)
    progress(1.0, "Importance ready")
    return out


def _depth_cross(session, loaded: LoadedModel, config: PruneConfig, drop_layers) -> dict:
    """depth_cross (a calibration pass) cached per removed-layer set, so moving the MLP slider
    with the same layers removed does not repeat the pass."""
    key = ("prune-depth-cross", loaded.fingerprint(), config.calib_source, config.calib_tokens,
           config.calib_block, config.seed, tuple(sorted(drop_layers)))
    if key not in session.cache:
        blocks = _calib_blocks(session, loaded, config.calib_source, config.calib_tokens,
                               config.calib_block, config.seed)
        session.cache[key] = depth_cross(loaded, blocks, drop_layers)
    return session.cache[key]


REFIT_SOLVER_MAX_BYTES = 2 << 30  # beyond this (very wide models) each setting solves directly


def _refit_solvers(session, loaded: LoadedModel, config: PruneConfig, gram: torch.Tensor,
                   neuron_scores) -> list | None:
    """Per-layer RefitSolver for the current calibration, ridge and neuron ranking, so a new
    slider setting's refit is one product per layer (surgery.refit_down). Only the latest set
    is kept: one set is as large as the Gram matrices."""
    if gram.numel() * gram.element_size() > REFIT_SOLVER_MAX_BYTES:
        return None
    key = (loaded.fingerprint(), config.calib_source, config.calib_tokens,
           config.calib_block, config.seed, config.ridge,
           config.method if neuron_scores is not None else None)
    cached = session.cache.get("prune-refit-solvers")
    if cached is None or cached[0] != key:
        layers = loaded.adapter.layers(loaded.model)
        solvers = [refit_solver(g, config.ridge, None if neuron_scores is None else neuron_scores[i],
                                loaded.adapter.glu(layers[i])[2].weight)
                   for i, g in enumerate(gram)]
        session.cache["prune-refit-solvers"] = cached = (key, solvers)
    return cached[1]


def _masks_digest(masks: dict) -> str:
    """One short key for {layer: bool mask}: a tuple of ~30k ints per slider setting would
    feed the garbage collector, which then walks every object of a running server."""
    digest = hashlib.sha1()
    for layer, mask in sorted(masks.items()):
        digest.update(str(layer).encode())
        digest.update(mask.cpu().numpy().tobytes())
    return digest.hexdigest()


REFIT_CACHE_SIZE = 4  # recent slider settings; a live preview moves through many


@dataclass
class _CachedRefit:
    plan: PruningPlan
    weights: dict
    exact: bool  # solved from scratch, not extended from a neighbour (float rounding differs)


def _removed_neurons(plan: PruningPlan) -> int:
    return sum(int((~keep).sum()) for keep in plan.neuron_keep.values())


def _neighbour(refits: OrderedDict, setting: tuple, plan: PruningPlan) -> _CachedRefit | None:
    """The cached refit of the same calibration closest to `plan` in neurons removed: the
    solvers extend it by the difference (surgery.refit_down)."""
    if plan.drop_layers:
        return None
    removed = _removed_neurons(plan)
    candidates = [entry for key, entry in refits.items() if key[:-1] == setting]
    return min(candidates, key=lambda e: abs(_removed_neurons(e.plan) - removed), default=None)


def plan_for(session, config: PruneConfig, progress: Progress = null_progress,
             should_stop=lambda: False, exact: bool = False) -> tuple[PruningPlan, dict | None]:
    """(plan, refit weights or None) for the working model; the refit is cached per plan. A
    preview extends the nearest cached setting's refit (a slider moved on); `exact` (Apply) always
    solves from scratch, so the applied weights never depend on which settings were previewed."""
    plan, weights, _ = _plan_and_refit(session, config, progress, should_stop, exact)
    return plan, weights


def _plan_and_refit(session, config: PruneConfig, progress: Progress, should_stop,
                    exact: bool) -> tuple[PruningPlan, dict | None, str]:
    """plan_for, plus how the refit was found: none, cached, extended or solved."""
    loaded = session.working()
    scores = compute_importance(session, config, progress, should_stop)
    plan = make_plan(loaded, scores, config)
    if not (config.uses_refit() and (plan.neuron_keep or plan.drop_layers)):
        return plan, None, "none"
    setting = ("prune-refit", loaded.fingerprint(), config.calib_source, config.calib_tokens,
               config.calib_block, config.seed, config.ridge, tuple(sorted(plan.drop_layers)))
    key = (*setting, _masks_digest(plan.neuron_keep))
    refits = session.cache.setdefault("prune-refits", OrderedDict())
    if key in refits and (refits[key].exact or not exact):
        refits.move_to_end(key)
        return plan, refits[key].weights, "cached"
    stats = calibration_stats(session, config.calib_source, config.calib_tokens,
                              config.calib_block, config.seed, with_gram=True)
    cross = _depth_cross(session, loaded, config, plan.drop_layers) if plan.drop_layers else {}
    start = None if exact else _neighbour(refits, setting, plan)
    weights = refit_weights(loaded, plan, stats.gram, config.ridge, cross,
                            _refit_solvers(session, loaded, config, stats.gram, scores.neurons),
                            start=None if start is None else (start.plan, start.weights))
    refits[key] = _CachedRefit(plan, weights, exact=start is None)
    refits.move_to_end(key)
    while len(refits) > REFIT_CACHE_SIZE:  # a refit is a full set of down_proj weights
        refits.popitem(last=False)
    return plan, weights, "solved" if start is None else "extended"


def _baseline(session, loaded: LoadedModel, name: str, blocks: torch.Tensor) -> float:
    key = ("prune-baseline", loaded.fingerprint(), name, tuple(blocks.shape), int(blocks.sum()))
    if key not in session.cache:
        session.cache[key] = perplexity(loaded.model, blocks)
    return session.cache[key]


@contextlib.contextmanager
def _preview_model(session, loaded: LoadedModel, plan: PruningPlan, refit: dict | None):
    """The model a preview evaluates: a sliced view (the applied model's FLOPs) when its sliced
    weights fit in memory, else the working model under masks (no extra memory, full-width
    FLOPs). Both give the applied model's logits (tests/test_surgery.py)."""
    if plan.is_empty():
        yield loaded.model
    elif session.has_room(sliced_view_bytes(loaded, plan, refit)):
        try:
            yield sliced_view(loaded, plan, refit).model
        finally:
            return_freed_heap()  # each view's weights have other sizes: do not let them pile up
    else:
        with masked(loaded, plan, refit) as model:
            yield model


def preview(session, config: PruneConfig, eval_sources: dict[str, str], eval_tokens: int = 512,
            block: int = 512, progress: Progress = null_progress, should_stop=lambda: False) -> dict:
    """Perplexity of the plan (equals the applied model's), next to the baseline."""
    loaded = session.working()
    started = time.perf_counter()
    plan, refit, how = _plan_and_refit(session, config, scaled(progress, 0.0, 0.8), should_stop,
                                       exact=False)
    block = min(block, eval_tokens)
    result = {"perplexity": {}, "baseline": {}, "refit": how,
              "timings": {"plan": time.perf_counter() - started}}
    with session.lock, _preview_model(session, loaded, plan, refit) as model:
        result["timings"]["model"] = time.perf_counter() - started - result["timings"]["plan"]
        for name, source in eval_sources.items():
            if not source:
                continue
            blocks = _calib_blocks(session, loaded, source, eval_tokens, block, None)
            result["baseline"][name] = _baseline(session, loaded, name + source, blocks)
            result["perplexity"][name] = perplexity(model, blocks, should_stop=should_stop)
    result["timings"]["total"] = time.perf_counter() - started
    total = parameter_count(loaded.model)
    before, after = layer_matmul_params(loaded, plan)
    result.update(params=planned_params(loaded, plan, total), params_base=total,
                  flops_ratio=after / before, est_speedup=before / after, plan=plan.summary())
    progress(1.0, "Preview ready")
    return result


def apply(session, config: PruneConfig, progress: Progress = null_progress,
          should_stop=lambda: False) -> LoadedModel:
    """Slice a deep copy of the working model into the session's student; record the step."""
    source_role = "student" if session.has("student") else "base"
    plan, refit = plan_for(session, config, scaled(progress, 0.0, 0.7), should_stop, exact=True)
    if plan.is_empty():
        raise PruningError("These settings remove nothing (all fractions round to zero); raise "
                           "the MLP or head fraction or the number of layers.")
    progress(0.75, "Slicing weights")
    with session.lock:
        loaded = session.copy_of(source_role)
        before = parameter_count(loaded.model)
        apply_plan(loaded, plan, refit)
        settings = asdict(config)
        settings.pop("extra", None)
        loaded.history.append({"step": "prune", **settings, "plan": _jsonable(plan.summary())})
        session.set_model("student", loaded)
        session.record({"step": "prune", **settings})
    log.info("pruned %d -> %d parameters", before, parameter_count(loaded.model))
    progress(1.0, "Pruned")
    return loaded


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def replay_step(session, settings: dict, progress: Progress = null_progress) -> dict:
    """Re-run a recorded prune step (recipe replay)."""
    config = PruneConfig.from_dict({k: v for k, v in settings.items() if k not in ("step", "time")})
    loaded = apply(session, config, progress)
    return {"step": "prune", "params": parameter_count(loaded.model)}


def perplexity_curve(session, config: PruneConfig, ratios, eval_source: str, eval_tokens: int = 512,
                     progress: Progress = null_progress, should_stop=lambda: False,
                     kind: str = "mlp") -> list[dict]:
    """Perplexity vs fraction pruned (kind: mlp, heads or layers), by masking; importance cached."""
    loaded = session.working()
    blocks = _calib_blocks(session, loaded, eval_source, eval_tokens, min(512, eval_tokens), None)
    n_layers = loaded.adapter.num_layers(loaded.config)
    rows = []
    for n, ratio in enumerate(ratios):
        if should_stop():
            break
        if kind == "mlp":
            cfg = replace(config, mlp_ratio=float(ratio))
        elif kind == "heads":
            cfg = replace(config, head_ratio=float(ratio))
        elif kind == "layers":
            cfg = replace(config, layers=int(round(float(ratio) * n_layers)))
        else:
            raise PruningError(f"Unknown curve kind '{kind}'; use mlp, heads or layers.")
        step = scaled(progress, n / len(ratios), (n + 1) / len(ratios))
        try:
            plan, refit = plan_for(session, cfg, step, should_stop)
        except PruningError as exc:
            rows.append({"ratio": float(ratio), "perplexity": None, "error": str(exc)})
            continue
        with session.lock, masked(loaded, plan, refit):
            ppl = perplexity(loaded.model, blocks, should_stop=should_stop)
        rows.append({"ratio": float(ratio), "perplexity": ppl,
                     "params": planned_params(loaded, plan, parameter_count(loaded.model))})
        step(1.0, f"Curve: {n + 1}/{len(ratios)} points")
    return rows


def save_pruned(loaded: LoadedModel, out_dir) -> Path:
    """Write a checkpoint plain `AutoModelForCausalLM.from_pretrained(out_dir)` loads."""
    from studio.models.loading import strip_quantizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(loaded.model, "hf_quantizer", None) is not None:
        strip_quantizer(loaded.model)
    started = time.time()
    loaded.model.save_pretrained(out)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(out)
    if getattr(loaded.model, "generation_config", None) is not None:
        loaded.model.generation_config.save_pretrained(out)
    log.info("saved %s in %.1fs", out, time.time() - started)
    return out
