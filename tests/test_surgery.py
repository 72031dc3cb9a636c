"""Surgery on tiny random models of every family: masked preview == sliced view == sliced model, exported
folders reload with plain transformers and generate with a KV cache, the refit lowers the error."""
from __future__ import annotations

import pytest
import torch

from studio.evaluation import parameter_count
from studio.hooks import run_with_cache
from studio.models.adapters import HeadLayout
from studio.models.tiny import FAMILIES
from studio.pruning import PruneConfig, apply, plan_for, save_pruned
from studio.stats import calibration_stats
from studio.surgery import (kept_layout, kept_width, masked, planned_params, refit_down,
                            refit_solver, sliced_view)
from studio.surgery import _extend_refit, _refit_with_solver

CALIB = dict(calib_source="builtin:python-docs", calib_tokens=256, calib_block=128)
CASES = {
    "neurons": PruneConfig(mlp_ratio=0.3, **CALIB),
    "neurons-refit-taylor": PruneConfig(mlp_ratio=0.5, method="taylor", ridge=0.01, **CALIB),
    "heads-per-group": PruneConfig(head_ratio=0.5, **CALIB),
    "heads-groups": PruneConfig(head_ratio=0.5, head_mode="groups", head_method="weight", **CALIB),
    "layers": PruneConfig(layers=2, layer_method="iterative_influence", **CALIB),
    "layers-manual-refit": PruneConfig(layers=2, layer_method="manual", layer_list=[1, 2], **CALIB),
    "layers-plain": PruneConfig(layers=1, reconstruct=False, **CALIB),
    "combined": PruneConfig(mlp_ratio=0.4, head_ratio=0.5, head_mode="groups", layers=1,
                            multiple_of=8, **CALIB),
}


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2000, (2, 20), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_previews_equal_sliced_model(tiny_session, family):
    session = tiny_session(family)
    base = session.get()
    ids = _ids()
    with torch.no_grad():
        original = base.model(input_ids=ids, use_cache=False).logits
        for name, config in CASES.items():
            plan, refit = plan_for(session, config)
            with masked(base, plan, refit):
                previewed = base.model(input_ids=ids, use_cache=False).logits
            assert torch.equal(base.model(input_ids=ids, use_cache=False).logits, original), \
                f"{name}: weights were not restored after the preview"
            config_before = base.config.to_dict()
            viewed = sliced_view(base, plan, refit).model(input_ids=ids, use_cache=False).logits
            assert torch.equal(base.model(input_ids=ids, use_cache=False).logits, original), \
                f"{name}: the sliced view changed the base weights"
            assert base.config.to_dict() == config_before, f"{name}: the view changed the config"
            pruned = apply(session, config)
            session.unload("student")  # next case starts again from the base
            applied = pruned.model(input_ids=ids, use_cache=False).logits
            assert (previewed - original).abs().max() > 1e-3, f"{name}: the plan changed nothing"
            assert (previewed - applied).abs().max() < 1e-4, name
            assert (viewed - applied).abs().max() < 1e-5, name
            assert parameter_count(pruned.model) == planned_params(
                base, plan, parameter_count(base.model)), name


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_and_generates_with_kv_cache(tiny_session, tmp_path, family):
    from transformers import AutoModelForCausalLM

    session = tiny_session(family)
    pruned = apply(session, CASES["combined"])
    cfg = pruned.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.num_hidden_layers) == (56, 2, 1, 3)
    assert cfg.head_dim == 16
    if getattr(cfg, "layer_types", None) is not None:
        assert len(cfg.layer_types) == 3
    folder = save_pruned(pruned, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = _ids(1)[:1, :8]
    kwargs = dict(max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0,
                  temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, pruned.model(input_ids=ids).logits,
                              atol=1e-4)
        expected = pruned.model.generate(ids, **{**kwargs, "use_cache": False})
        got = reloaded.generate(ids, **kwargs)
    assert torch.equal(got, expected)


def test_reconstruction_lowers_layer_output_error(tiny_session):
    session = tiny_session("llama")
    base = session.get()
    config = PruneConfig(mlp_ratio=0.5, **CALIB)
    plan, refit = plan_for(session, config)
    stats = calibration_stats(session, config.calib_source, config.calib_tokens, config.calib_block,
                              config.seed, with_gram=True)
    from studio.data import token_blocks

    blocks = token_blocks(base.tokenizer, config.calib_source, config.calib_block,
                          config.calib_tokens, seed=config.seed)
    _, cache = run_with_cache(base.model, base.adapter, blocks, ["layers.1.mlp.act"])
    x = cache["layers.1.mlp.act"].reshape(-1, 96)
    down = base.adapter.glu(base.adapter.layers(base.model)[1])[2].weight.detach()
    keep = plan.neuron_keep[1]
    target = x @ down.T
    sliced = (x[:, keep] @ down[:, keep].T - target).pow(2).mean()
    refitted = (x[:, keep] @ refit[1].T - target).pow(2).mean()
    assert refitted < 0.8 * sliced
    # ridge -> infinity is plain slicing, ridge 0 is the least-squares optimum
    far = refit_down(down, stats.gram[1], keep, 1e9)
    assert torch.allclose(far, down[:, keep], atol=1e-5)
    exact = refit_down(down, stats.gram[1], keep, 0.0)
    assert (x[:, keep] @ exact.T - target).pow(2).mean() <= refitted + 1e-7


@pytest.mark.parametrize("ridge", [0.3, 0.001])
@pytest.mark.parametrize("removed", [0, 5, 20, 35])
@pytest.mark.parametrize("with_cross", [False, True])
def test_refit_from_the_cached_solver_equals_the_direct_solve(ridge, removed, with_cross):
    """The optimal-brain-surgeon form (one factor and Y per layer in importance order, one
    product per setting) and the direct solve over the kept columns are the same minimiser; a keep
    set that is not the top of the ranking, or more removed than kept, takes the direct path."""
    gen = torch.Generator().manual_seed(removed)
    x = torch.randn(400, 48, generator=gen) @ torch.randn(48, 48, generator=gen) * 0.3
    gram, weight = x.T @ x / 400, torch.randn(16, 48, generator=gen)
    cross = torch.randn(16, 48, generator=gen) * 0.1 if with_cross else None
    scores = torch.rand(48, generator=gen)
    solver = refit_solver(gram, ridge, scores, weight)  # Y = W F⁻ᵀ solved once
    assert solver.y is not None
    top = torch.ones(48, dtype=torch.bool)
    top[scores.argsort()[:removed]] = False
    other = torch.ones(48, dtype=torch.bool)
    other[torch.randperm(48, generator=gen)[:removed]] = False
    # the solver path is really taken for the top of the ranking, and refused for another set
    assert _refit_with_solver(weight, solver, top, cross) is not None
    assert removed == 0 or _refit_with_solver(weight, solver, other, cross) is None
    lam = ridge * gram.diagonal().mean()
    for keep in (top, other):
        direct = refit_down(weight, gram, keep, ridge, cross)
        assert direct.shape == (16, 48 - removed)
        for fast in (refit_down(weight, gram, keep, ridge, cross, solver),  # cached Y
                     refit_down(weight, gram, keep, ridge, cross, refit_solver(gram, ridge, scores))):
            assert (fast - direct).abs().max() <= 1e-4 * direct.abs().max()
        # a weight trained in place after its solver was built: the stale Y is not used
        changed = weight.clone()
        stale = refit_solver(gram, ridge, scores, changed)
        changed.add_(torch.randn(16, 48, generator=gen))
        want = refit_down(changed, gram, keep, ridge, cross)
        got = refit_down(changed, gram, keep, ridge, cross, stale)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        # the minimiser: the objective's gradient over the kept columns vanishes
        k = keep.nonzero().flatten()
        c = cross[:, k] if with_cross else 0
        grad = direct.double() @ (gram[k][:, k] + lam * torch.eye(len(k))).double() \
            - (weight @ gram[:, k] + c + lam * weight[:, k]).double()
        assert grad.abs().max() < 1e-4 * weight.abs().max()


def test_a_moved_slider_extends_the_neighbouring_refit():
    """A refit for the r0 least important removed, extended to r by the product over the neurons
    whose fate changed alone (up or down the slider), equals the refit solved for r; another
    order, a depth term or a stale weight are not extended."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(400, 48, generator=gen) @ torch.randn(48, 48, generator=gen) * 0.3
    gram, weight = x.T @ x / 400, torch.randn(16, 48, generator=gen)
    scores = torch.rand(48, generator=gen)
    solver = refit_solver(gram, 0.3, scores, weight)

    def top(removed):
        keep = torch.ones(48, dtype=torch.bool)
        keep[scores.argsort()[:removed]] = False
        return keep

    for r0, r in ((0, 10), (5, 20), (12, 13), (20, 20), (10, 5), (20, 0), (13, 12)):
        start = (top(r0), refit_down(weight, gram, top(r0), 0.3, solver=solver))
        extended = _extend_refit(weight, solver, top(r), None, start)
        want = refit_down(weight, gram, top(r), 0.3)
        assert extended is not None and extended.shape == want.shape
        assert (extended - want).abs().max() <= 1e-5 * want.abs().max()
        assert torch.equal(refit_down(weight, gram, top(r), 0.3, solver=solver, start=start),
                           extended)
    start = (top(20), refit_down(weight, gram, top(20), 0.3, solver=solver))
    other = top(20)
    other[scores.argsort()[-1]] = False
    assert _extend_refit(weight, solver, other, None, start) is None  # not the ranking's bottom
    assert _extend_refit(weight, solver, top(25), torch.ones(16, 48), start) is None
    assert _extend_refit(weight + 1, solver, top(25), None, start) is None  # another weight


def test_previews_extend_refits_and_apply_solves_from_scratch(tiny_session):
    """Moving the MLP slider on reuses the cached neighbour; Apply's weights do not depend on
    which settings were previewed, and agree with the extended preview's to float rounding."""
    session = tiny_session("llama")
    plan_for(session, PruneConfig(mlp_ratio=0.5, **CALIB))
    plan, extended = plan_for(session, PruneConfig(mlp_ratio=0.4, **CALIB))
    cached = list(session.cache["prune-refits"].values())
    assert [entry.exact for entry in cached] == [True, False]
    fresh_session = tiny_session("llama")
    _, scratch = plan_for(fresh_session, PruneConfig(mlp_ratio=0.4, **CALIB), exact=True)
    for i, weight in scratch.items():
        assert (extended[i] - weight).abs().max() <= 1e-5 * weight.abs().max()
    student = apply(session, PruneConfig(mlp_ratio=0.4, **CALIB))
    fresh = apply(fresh_session, PruneConfig(mlp_ratio=0.4, **CALIB))
    for a, b in zip(student.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)


def test_width_and_head_rounding_rules():
    assert kept_width(96, 0.3) == 67
    assert kept_width(96, 0.3, multiple_of=8) == 64
    assert kept_width(1536, 0.3, multiple_of=64) == 1088
    layout = HeadLayout(9, 3, 64)
    assert kept_layout(layout, 576, 1 / 3, "per-group") == HeadLayout(6, 3, 64)
    assert kept_layout(layout, 576, 1 / 3, "groups") == HeadLayout(6, 2, 64)


def test_depth_refit_lowers_the_residual_error_after_removed_layers(tiny_session):
    """Layers 1-2 removed: layer 0's down_proj absorbs a least-squares stand-in for their
    contribution, so the residual stream entering layer 3 is closer to the full model's."""
    from studio.data import token_blocks

    session = tiny_session("llama")
    base = session.get()
    common = dict(layers=2, layer_method="manual", layer_list=[1, 2], **CALIB)
    plan, refit = plan_for(session, PruneConfig(**common))
    assert plan.drop_layers == [1, 2] and set(refit) == {0}
    assert refit[0].shape == base.adapter.glu(base.adapter.layers(base.model)[0])[2].weight.shape
    assert plan_for(session, PruneConfig(**common, reconstruct=False))[1] is None
    blocks = token_blocks(base.tokenizer, CALIB["calib_source"], CALIB["calib_block"],
                          CALIB["calib_tokens"], seed=0)
    _, full = run_with_cache(base.model, base.adapter, blocks, ["layers.2.resid_post"])
    errors = {}
    for name, weights in (("plain", None), ("refit", refit)):
        with masked(base, plan, weights):
            _, cut = run_with_cache(base.model, base.adapter, blocks, ["layers.0.resid_post"])
        errors[name] = (cut["layers.0.resid_post"] - full["layers.2.resid_post"]).pow(2).mean()
    assert errors["refit"] < 0.9 * errors["plain"], errors
