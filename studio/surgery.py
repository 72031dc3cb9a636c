"""Pruning plans and the surgery that carries them out: choose what stays, preview it (a sliced
view that shares the untouched weights, or masks), slice the weights for real, and refit
down_proj by least squares.

Masking (studio.hooks.pruning_masks) zeroes exactly what slicing removes, so a preview of a plan
and the sliced model give the same logits.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from studio.errors import PruningError
from studio.hooks import hooks, pruning_masks
from studio.models.adapters import HeadLayout
from studio.models.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class PruningPlan:
    """What stays: per layer (original numbering) kept neurons, query heads and KV heads."""

    neuron_keep: dict[int, torch.Tensor] = field(default_factory=dict)
    head_keep: dict[int, torch.Tensor] = field(default_factory=dict)
    kv_keep: dict[int, torch.Tensor] = field(default_factory=dict)
    drop_layers: list[int] = field(default_factory=list)
    width: int | None = None          # kept GLU width (None: unchanged)
    layout: HeadLayout | None = None  # kept head layout (None: unchanged)

    def summary(self) -> dict:
        return {"glu_width": self.width, "query_heads": self.layout and self.layout.num_heads,
                "kv_heads": self.layout and self.layout.num_kv_heads,
                "drop_layers": sorted(self.drop_layers),
                "pruned_neurons": {i: int((~k).sum()) for i, k in self.neuron_keep.items()},
                "pruned_heads": {i: (~k).nonzero().flatten().tolist() for i, k in self.head_keep.items()}}

    def is_empty(self) -> bool:
        return not (self.neuron_keep or self.head_keep or self.drop_layers)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def kept_width(width: int, ratio: float, multiple_of: int = 1) -> int:
    """GLU width left after removing `ratio`, rounded to a multiple; refuses zero."""
    keep = _round_half_up(width * (1 - ratio) / multiple_of) * multiple_of
    keep = min(keep, width)
    if keep <= 0:
        raise PruningError(f"Removing {ratio:.0%} of {width} neurons rounded to a multiple of "
                           f"{multiple_of} leaves no neuron; lower the MLP fraction or --multiple-of.")
    return keep


def _valid_fractions(layout: HeadLayout, hidden: int, mode: str) -> list[str]:
    g, kv = layout.group_size, layout.num_kv_heads
    if mode == "groups":
        return [f"{n}/{kv}" for n in range(kv) if hidden % ((kv - n) * g) == 0]
    return [f"{d}/{g}" for d in range(g) if hidden % (kv * (g - d)) == 0]


def kept_layout(layout: HeadLayout, hidden: int, ratio: float, mode: str) -> HeadLayout:
    """Head layout left after removing `ratio` of query heads (GQA-aware, same in every layer)."""
    g, kv = layout.group_size, layout.num_kv_heads
    if mode == "groups":
        drop = _round_half_up(kv * ratio)
        new = HeadLayout((kv - drop) * g, kv - drop, layout.head_dim)
        what = f"{drop} of {kv} KV groups"
    elif mode == "per-group":
        drop = _round_half_up(g * ratio)
        new = HeadLayout(kv * (g - drop), kv, layout.head_dim)
        what = f"{drop} of {g} query heads in every KV group"
    else:
        raise PruningError(f"Unknown head mode '{mode}'; use 'per-group' or 'groups'.")
    valid = ", ".join(_valid_fractions(layout, hidden, mode)) or "none"
    if new.num_heads <= 0:
        raise PruningError(f"Removing {ratio:.0%} of the heads ({what}) removes every head; "
                           f"choose a head fraction among {valid}.")
    if hidden % new.num_heads:
        raise PruningError(f"Removing {what} leaves {new.num_heads} query heads, which do not divide "
                           f"hidden_size {hidden}; choose a head fraction ({mode}) among {valid}.")
    return new


def importance_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices from least to most important (stable, so ties always break the same way)."""
    return torch.argsort(scores.float(), stable=True)


def _top_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[importance_order(scores)[scores.numel() - keep:]] = True
    return mask


def make_plan(loaded: LoadedModel, scores, config) -> PruningPlan:
    """Turn scores + a PruneConfig into kept sets (highest scores stay)."""
    adapter, cfg = loaded.adapter, loaded.config
    n_layers, plan = adapter.num_layers(cfg), PruningPlan()
    if config.mlp_ratio > 0:
        width = adapter.intermediate_size(cfg)
        plan.width = kept_width(width, config.mlp_ratio, config.multiple_of)
        if plan.width < width:
            plan.neuron_keep = {i: _top_mask(scores.neurons[i], plan.width) for i in range(n_layers)}
    if config.head_ratio > 0:
        layout = adapter.head_layout(cfg)
        new = kept_layout(layout, cfg.hidden_size, config.head_ratio, config.head_mode)
        plan.layout = new
        if new != layout:
            for i in range(n_layers):
                heads = scores.heads[i].float().view(layout.num_kv_heads, layout.group_size)
                if config.head_mode == "groups":
                    kv = _top_mask(heads.sum(1), new.num_kv_heads)
                    q = kv[:, None].expand(-1, layout.group_size)
                else:
                    kv = torch.ones(layout.num_kv_heads, dtype=torch.bool)
                    q = torch.zeros_like(heads, dtype=torch.bool)
                    q.scatter_(1, torch.topk(heads, new.group_size, dim=1).indices, True)
                plan.head_keep[i], plan.kv_keep[i] = q.reshape(-1).clone(), kv
    if config.layers > 0:
        if config.layer_method == "manual":
            plan.drop_layers = sorted(set(config.layer_list or []))
        else:
            plan.drop_layers = sorted(torch.topk(scores.layers.float(), config.layers,
                                                 largest=False).indices.tolist())
    return plan


# -- least-squares refit -------------------------------------------------------------------
def _refit_dtype(ridge: float) -> torch.dtype:
    # the ridge bounds the condition number, so float32 is accurate unless the ridge is tiny
    return torch.float32 if ridge >= 0.01 else torch.float64


def _ridge_system(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """G + λI with λ = ridge · mean diag G: a property of the layer, not of the kept set, so one
    inverse serves every setting of the slider."""
    g = gram.to(_refit_dtype(ridge))
    lam = ridge * g.diagonal().mean().clamp_min(1e-12)
    return g + lam * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)


@dataclass
class RefitSolver:
    """One layer's H = (G + λI)⁻¹ kept as the lower Cholesky factor F of H with the neurons in
    ascending importance. When the r least important neurons go, H[r, r] = F_rr F_rrᵀ and
    H[r, k] = F_rr F_krᵀ are read off F's leading blocks, so the OBS correction
    V[:, r] H[r, r]⁻¹ H[r, k] = Y[:, :r] F_krᵀ with Y = V F⁻ᵀ. Y's first r columns do not depend
    on r (a triangular system), so Y is solved once and a new setting costs one product."""
    order: torch.Tensor   # neuron indices, least important first
    factor: torch.Tensor  # F, lower triangular: H[order][:, order] = F Fᵀ
    y: torch.Tensor | None = None  # W[:, order] F⁻ᵀ for the down_proj weight it was built with
    weight_key: tuple | None = None

    @property
    def rank(self) -> torch.Tensor:
        """Each neuron's position in `order`."""
        return self.order.argsort()


def _weight_key(weight: torch.Tensor) -> tuple:
    # storage, in-place version and shape: a trained or replaced weight no longer matches
    return weight.data_ptr(), weight._version, tuple(weight.shape)


def refit_solver(gram: torch.Tensor, ridge: float, scores: torch.Tensor | None,
                 weight: torch.Tensor | None = None) -> RefitSolver | None:
    """The layer's RefitSolver for neuron `scores` (None: any order) and down_proj `weight`
    (None: Y is solved per setting), or None when the system is not positive definite in this
    precision (the refit then solves directly)."""
    order = importance_order(scores if scores is not None else torch.zeros(gram.shape[0]))
    order = order.to(gram.device)
    system = _ridge_system(gram, ridge).index_select(0, order).index_select(1, order)
    # A = M Mᵀ with M upper triangular (Cholesky of A with rows and columns reversed), so
    # H = A⁻¹ = M⁻ᵀ M⁻¹ and F = M⁻ᵀ: one factorisation and one triangular inverse
    reversed_factor, info = torch.linalg.cholesky_ex(system.flip(0, 1))
    if info != 0:
        return None
    upper = reversed_factor.flip(0, 1)
    eye = torch.eye(len(order), dtype=system.dtype, device=system.device)
    factor = torch.linalg.solve_triangular(upper, eye, upper=True).T.contiguous()
    solver = RefitSolver(order, factor)
    if weight is not None:
        v = weight.detach().to(factor.device, factor.dtype).index_select(1, order)
        solver.y = torch.linalg.solve_triangular(factor, v.T, upper=False).T.contiguous()
        solver.weight_key = _weight_key(weight)
    return solver


def refit_down(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, ridge: float,
               cross: torch.Tensor | None = None, solver: RefitSolver | None = None,
               start: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """down_proj columns for the kept neurons that best reproduce the full layer output on the
    calibration activations: argmin ‖X Wᵀ + Δ − X_k W'ᵀ‖² + λ‖W' − W[:, k]‖², i.e.
    W' = (W G[:, k] + C[:, k] + λ W[:, k]) (G[k, k] + λI)⁻¹ with λ = ridge · mean diag G.
    Δ is what removed layers right after this one used to add to the residual stream (C = E[Δᵀx],
    None when no layer follows removed): the depth refit folds a linear stand-in for them here.
    ridge → 0 is the plain least-squares refit, ridge → ∞ is plain slicing.

    With a `solver` whose order puts the removed neurons first, and fewer removed than kept, the
    optimal-brain-surgeon form W' = V[:, k] − V[:, r] H[r, r]⁻¹ H[r, k] (V = W + C H) costs one
    product (plus a triangular solve with the depth term): a first preview waits for this.
    `start` = (keep0, refit0), the solver-path refit of another number of least important neurons
    removed (a slider moved on), makes the product cover only the neurons whose fate changed:
    the same weights up to float rounding.
    Otherwise it is solved directly as a correction to the kept columns, W[:, k] + (W[:, r] G[r, k] + C[:, k])
    (G[k, k] + λI)⁻¹. All are the same minimiser (tests/test_surgery.py)."""
    if solver is not None and (~keep).sum() <= keep.sum():
        device = solver.factor.device
        refit = (_extend_refit(weight, solver, keep.to(device), cross, start) if start is not None
                 else None)
        if refit is None:
            refit = _refit_with_solver(weight, solver, keep.to(device), cross)
        if refit is not None:
            return refit.to(weight.dtype)
    kept = keep.to(gram.device).nonzero().flatten()
    removed = (~keep).to(gram.device).nonzero().flatten()
    return _refit_direct(weight, gram, kept, removed, ridge, cross).to(weight.dtype)


def _refit_with_solver(weight, solver: RefitSolver, keep, cross):
    f, order = solver.factor, solver.order
    r = int((~keep).sum())
    if keep[order[:r]].any():  # not the r least important: the factor's blocks do not apply
        return None
    kept_order = order[r:]
    if cross is None and solver.y is not None and solver.weight_key == _weight_key(weight):
        v_k = weight.detach().to(f.device, f.dtype).index_select(1, kept_order)
        refit = v_k - solver.y[:, :r] @ f[r:, :r].T
    else:
        v = weight.detach().to(f.device, f.dtype).index_select(1, order)
        if cross is not None:  # V = W + C H, in importance order
            v = v + (cross.to(f.device, f.dtype).index_select(1, order) @ f) @ f.T
        refit = v[:, r:]
        if r:
            y = torch.linalg.solve_triangular(f[:r, :r], v[:, :r].T, upper=False).T  # V_r F_rr⁻ᵀ
            refit = refit - y @ f[r:, :r].T
    return refit[:, kept_order.argsort()]  # back to ascending neuron index, as slicing keeps them


def _extend_refit(weight, solver: RefitSolver, keep, cross, start):
    """The solver-path refit for the r least important removed, from one for r0 of them:
    W'(r) = Y[:, r:] F[k, r:]ᵀ, so W'(r) = W'(r0)[:, still kept] ∓ Y[:, lo:hi] F[k, lo:hi]ᵀ,
    where neurons that come back start from zero (F is lower triangular). Costs D·|r − r0|·k
    instead of D·r·k. None when `start` is not such a refit of this weight."""
    keep0, refit0 = start
    f, order = solver.factor, solver.order
    keep0 = keep0.to(f.device)
    r, r0 = int((~keep).sum()), int((~keep0).sum())
    usable = (cross is None and solver.y is not None and solver.weight_key == _weight_key(weight)
              and refit0.dtype == f.dtype and not keep0[order[:r0]].any()
              and not keep[order[:r]].any())
    if not usable:
        return None
    kept = keep.nonzero().flatten()  # ascending, as the refit's columns are
    rows = solver.rank.index_select(0, kept)
    lo, hi = min(r, r0), max(r, r0)
    change = solver.y[:, lo:hi] @ f[:, lo:hi].index_select(0, rows).T
    refit0 = refit0.to(f.device)
    if r0 <= r:  # more removed: every kept column was kept before
        return refit0.index_select(1, torch.searchsorted(keep0.nonzero().flatten(), kept)) - change
    change[:, keep0.index_select(0, kept)] += refit0  # kept0 ⊂ kept, both ascending
    return change


def _refit_direct(weight, gram, kept, removed, ridge, cross):
    system = _ridge_system(gram, ridge)
    dtype = system.dtype
    g_k = system.index_select(0, kept)
    system_kk = g_k.index_select(1, kept)
    factor, info = torch.linalg.cholesky_ex(system_kk)

    def solve(rhs: torch.Tensor) -> torch.Tensor:
        if info == 0:
            return torch.cholesky_solve(rhs, factor)
        # not positive definite in this precision (ridge 0, rank-deficient calibration)
        return torch.linalg.lstsq(system_kk.double(), rhs.double()).solution.to(dtype)

    w = weight.detach().to(gram.device, dtype)
    g_kr, w_r = g_k.index_select(1, removed), w.index_select(1, removed)  # G[k, r] = (G+λI)[k, r]
    if cross is None and len(removed) <= w.shape[0]:
        correction = w_r @ solve(g_kr).T  # solve for r columns rather than D
    else:
        rhs = g_kr @ w_r.T
        if cross is not None:
            rhs = rhs + cross.to(gram.device, dtype).index_select(1, kept).T
        correction = solve(rhs).T
    return w.index_select(1, kept) + correction


def removed_runs(drop_layers) -> list[tuple[int, int]]:
    """Maximal runs (first, last) of consecutive removed layers."""
    runs: list[list[int]] = []
    for i in sorted(drop_layers):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(a, b) for a, b in runs]


@torch.no_grad()
def depth_cross(loaded: LoadedModel, blocks: torch.Tensor, drop_layers) -> dict[int, torch.Tensor]:
    """{kept layer k: E[Δᵀ x_k]} where x_k is layer k's down_proj input and Δ the residual-stream
    change of the run of removed layers right after k (one calibration pass, full model)."""
    runs = [(a, b) for a, b in removed_runs(drop_layers) if a > 0]  # layer 0 has no predecessor
    if not runs:
        return {}
    sums: dict[int, torch.Tensor] = {}
    seen: dict[tuple[int, str], torch.Tensor] = {}
    ends = {b: a for a, b in runs}

    def fn(name, x):
        i, kind = int(name.split(".")[1]), name.split(".", 2)[2]
        seen[(i, kind)] = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if kind == "resid_post" and i in ends:
            a = ends[i]
            x_prev = seen.pop((a - 1, "mlp.act"))
            delta = seen.pop((i, "resid_post")) - seen.pop((a, "resid_pre"))
            sums[a - 1] = sums.get(a - 1, 0) + (delta.T @ x_prev).cpu()

    names = [n for a, b in runs for n in (f"layers.{a - 1}.mlp.act", f"layers.{a}.resid_pre",
                                           f"layers.{b}.resid_post")]
    model, adapter = loaded.model, loaded.adapter
    with hooks(model, adapter, names, fn):
        for n in range(blocks.shape[0]):
            model(input_ids=blocks[n:n + 1].to(loaded.device), use_cache=False)
            seen.clear()
    return {k: v / blocks.numel() for k, v in sums.items()}


def refit_weights(loaded: LoadedModel, plan: PruningPlan, gram: torch.Tensor, ridge: float,
                  cross: dict[int, torch.Tensor] | None = None, solvers=None,
                  start: tuple[PruningPlan, dict] | None = None) -> dict:
    """{layer: refit down_proj weight [D, kept]} for every layer whose neurons are pruned or that
    takes over removed layers' contribution (`cross`, from depth_cross). `solvers`: per-layer
    RefitSolver (None entries allowed) that make a new setting's solve cheap; `start`: (plan, refit)
    of a neighbouring setting, which the solvers extend (see refit_down)."""
    layers = loaded.adapter.layers(loaded.model)
    cross = cross or {}
    out = {}
    for i in sorted(set(plan.neuron_keep) | set(cross)):
        down = loaded.adapter.glu(layers[i])[2]
        keep = _kept_columns(plan, i, down.weight.shape[1])
        solver = solvers[i] if solvers is not None else None
        layer_start = None
        if start is not None and i in start[0].neuron_keep and i in start[1]:
            layer_start = (start[0].neuron_keep[i], start[1][i])
        refit = refit_down(down.weight, gram[i], keep, ridge, cross.get(i), solver, layer_start)
        out[i] = refit.to(down.weight.device)
    return out


def _kept_columns(plan: PruningPlan, layer: int, width: int) -> torch.Tensor:
    keep = plan.neuron_keep.get(layer)
    return keep if keep is not None else torch.ones(width, dtype=torch.bool)


# -- preview by masking --------------------------------------------------------------------
@contextlib.contextmanager
def masked(loaded: LoadedModel, plan: PruningPlan, refit: dict | None = None):
    """The plan applied by masks (and refit down_proj weights, zero-padded) until the context
    closes; weights are restored in `finally`."""
    layers = loaded.adapter.layers(loaded.model)
    saved = {}
    try:
        with torch.no_grad():
            for i, new in (refit or {}).items():
                down = loaded.adapter.glu(layers[i])[2]
                saved[i] = down.weight.data
                padded = torch.zeros_like(down.weight.data)
                keep = _kept_columns(plan, i, padded.shape[1])
                padded[:, keep.to(padded.device)] = new.to(padded.dtype)
                down.weight.data = padded
        with pruning_masks(loaded.model, loaded.adapter, plan.neuron_keep, plan.head_keep,
                           plan.drop_layers):
            yield loaded.model
    finally:
        for i, weight in saved.items():
            loaded.adapter.glu(layers[i])[2].weight.data = weight


def sliced_view_bytes(loaded: LoadedModel, plan: PruningPlan, refit: dict | None = None) -> int:
    """Upper bound on the extra memory of sliced_view: the Linear weights of the layers it rewrites."""
    layers = loaded.adapter.layers(loaded.model)
    size = loaded.dtype.itemsize
    touched = set(plan.neuron_keep) | set(plan.head_keep) | set(refit or {})
    return sum(m.weight.numel() * size for i in touched
               for m in layers[i].modules() if isinstance(m, nn.Linear))


def sliced_view(loaded: LoadedModel, plan: PruningPlan, refit: dict | None = None) -> LoadedModel:
    """The plan applied by slicing to a copy that shares every untouched tensor with `loaded`
    (embeddings, norms, unpruned layers): costs only the sliced weights, runs the smaller
    model's FLOPs, and is by construction the model `apply_plan` makes. The original is unchanged."""
    shared = {id(t): t for t in (*loaded.model.parameters(), *loaded.model.buffers())}
    view = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model, shared),
                               history=list(loaded.history))
    apply_plan(view, plan, refit)  # replaces Parameters on the copy's modules, never in place
    return view


# -- slicing -------------------------------------------------------------------------------
def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None,
                  cols: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        w, fresh = linear.weight.data, False
        if weight is not None:
            w = weight
        elif cols is not None:
            w, fresh = w[:, cols.to(w.device)], True
        if rows is not None:
            w, fresh = w[rows.to(w.device)], True
            if linear.bias is not None:
                linear.bias = nn.Parameter(linear.bias.data[rows.to(w.device)])  # a copy
        # a copy unless indexing made one: never share the refit cache's or the original's memory
        linear.weight = nn.Parameter(w.contiguous() if fresh else w.clone())
    linear.out_features, linear.in_features = linear.weight.shape


def _head_rows(keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    return keep.repeat_interleave(head_dim)


def apply_plan(loaded: LoadedModel, plan: PruningPlan, refit: dict | None = None) -> None:
    """Slice the weights in place and keep the config consistent (widths, heads, layers)."""
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.layers(model)
    for i, keep in plan.neuron_keep.items():
        gate, up, down = adapter.glu(layers[i])
        _slice_linear(gate, rows=keep)
        _slice_linear(up, rows=keep)
        _slice_linear(down, cols=keep, weight=(refit or {}).get(i))
    for i, weight in (refit or {}).items():  # full-width layers that absorb removed layers
        if i not in plan.neuron_keep:
            _slice_linear(adapter.glu(layers[i])[2], weight=weight)
    if plan.neuron_keep:
        adapter.set_intermediate_size(model.config, plan.width)
    if plan.head_keep:
        head_dim = adapter.head_layout(model.config).head_dim
        for i, keep in plan.head_keep.items():
            q, k, v, o = adapter.qkvo(layers[i])
            kv_rows = _head_rows(plan.kv_keep[i], head_dim)
            _slice_linear(q, rows=_head_rows(keep, head_dim))
            _slice_linear(k, rows=kv_rows)
            _slice_linear(v, rows=kv_rows)
            _slice_linear(o, cols=_head_rows(keep, head_dim))
        adapter.set_head_layout(model, plan.layout)
    if plan.drop_layers:
        n_layers = adapter.num_layers(model.config)
        adapter.keep_layers(model, [i for i in range(n_layers) if i not in set(plan.drop_layers)])


# -- size and cost ------------------------------------------------------------------------
def _numel(linear: nn.Linear) -> tuple[int, int]:
    return linear.weight.shape[0], linear.weight.shape[1]


def planned_params(loaded: LoadedModel, plan: PruningPlan, total: int) -> int:
    """Parameter count of the model the plan would produce (total = current unique count)."""
    adapter, layers = loaded.adapter, loaded.adapter.layers(loaded.model)
    removed = 0
    for i, layer in enumerate(layers):
        if i in plan.drop_layers:
            removed += sum(p.numel() for p in layer.parameters())
            continue
        if i in plan.neuron_keep:
            cut = int((~plan.neuron_keep[i]).sum())
            for lin in adapter.glu(layer):
                out_f, in_f = _numel(lin)
                removed += cut * (in_f if lin is not adapter.glu(layer)[2] else out_f)
                if lin.bias is not None and lin is not adapter.glu(layer)[2]:
                    removed += cut
        if i in plan.head_keep:
            q, k, v, o = adapter.qkvo(layer)
            dh = adapter.head_layout(loaded.config).head_dim
            cut_q = int((~plan.head_keep[i]).sum()) * dh
            cut_kv = int((~plan.kv_keep[i]).sum()) * dh
            removed += cut_q * (q.in_features + (q.bias is not None)) + cut_q * o.out_features
            for lin in (k, v):
                removed += cut_kv * (lin.in_features + (lin.bias is not None))
    return total - removed


def layer_matmul_params(loaded: LoadedModel, plan: PruningPlan | None = None) -> tuple[int, int]:
    """(per-token matmul weights before, after the plan): every decoder Linear plus the LM head."""
    adapter, model = loaded.adapter, loaded.model
    head = model.get_output_embeddings().weight.numel()
    before = head + sum(m.weight.numel() for layer in adapter.layers(model)
                        for m in layer.modules() if isinstance(m, nn.Linear))
    if plan is None:
        return before, before
    after = planned_params(loaded, plan, before)  # biases/norms are negligible in this estimate
    return before, after
