"""The Pruning tab through gradio_client on the shared studio server (default model).

The server's session is shared with other tests: every test passes the settings it needs, and the
test that applies pruning discards the student again."""
from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from tests.conftest import PUBMEDQA

BUILTIN = "builtin:python-docs"
# small budgets: one 128-token window per preview set, 1024 calibration tokens
FAST = dict(calib_tokens=1024, calib_source=BUILTIN, preview_tokens=128, general_source=BUILTIN,
            domain_source=f"pubmedqa:{PUBMEDQA}:test", use_domain=PUBMEDQA.exists())


def preview(client, mlp=0.0, heads=0.0, layers=0, **extra):
    return client.predict(mlp, heads, layers, **{**FAST, **extra}, api_name="/preview_pruning")


@pytest.fixture(scope="module")
def base_summary(client):
    client.predict(api_name="/discard_student")  # start from the base whatever ran before
    summary, _ = client.predict(api_name="/model_summary")
    return summary


@pytest.fixture(scope="module")
def importance(client, base_summary):
    return client.predict(**FAST, api_name="/compute_importance")


def test_compute_importance_scores_every_part(importance, base_summary):
    L = base_summary["layers"]
    assert importance["status"] == "ready" and importance["tokens"] == 1024
    assert importance["shapes"] == {"neurons": [L, base_summary["glu_width"]],
                                    "heads": [L, base_summary["query_heads"]], "layers": [L]}


def test_preview_two_settings_gives_different_perplexity_and_exact_sizes(client, base_summary,
                                                                         importance):
    s = base_summary
    plain = preview(client)
    pruned = preview(client, 0.25, 1 / 3)
    sets = ["general", "domain"] if FAST["use_domain"] else ["general"]
    assert sorted(plain["perplexity"]) == sorted(sets)
    for name in sets:  # nothing removed: the preview is the baseline
        assert plain["perplexity"][name] == pytest.approx(plain["baseline"][name], rel=1e-6)
        assert pruned["perplexity"][name] > pruned["baseline"][name] * 1.01
    assert plain["params"] == plain["params_base"] == s["params"]
    # 25% of the GLU neurons and 1 query head in each of the KV groups, in every layer
    kept = round(s["glu_width"] * 0.75)
    group = s["query_heads"] // s["kv_heads"]
    dropped_heads = s["kv_heads"] * round(group / 3)
    removed = s["layers"] * (3 * s["hidden_size"] * (s["glu_width"] - kept)
                             + 2 * s["hidden_size"] * s["head_dim"] * dropped_heads)
    assert pruned["params"] == s["params"] - removed
    assert pruned["plan"]["glu_width"] == kept
    assert pruned["plan"]["query_heads"] == s["query_heads"] - dropped_heads
    assert 1.0 < pruned["est_speedup"] < 1 / (1 - 0.25)
    assert pruned["preview_tokens"] == 128


def test_preview_equals_applied_student_and_apply_slices(client, base_summary, importance):
    s = base_summary
    setting = dict(mlp=0.2, heads=0.0, layers=1, reconstruct=True)
    previewed = preview(client, **setting)
    try:
        applied = client.predict(0.2, 0.0, 1, reconstruct=True, **FAST, api_name="/apply_pruning")
        student = applied["student"]
        assert student["glu_width"] == round(s["glu_width"] * 0.8)
        assert student["layers"] == s["layers"] - 1
        assert student["query_heads"] == s["query_heads"]
        assert applied["params"] == previewed["params"] == student["params"]
        assert applied["params_before"] == s["params"]
        step = applied["recipe_step"]
        assert step["step"] == "prune" and step["mlp_ratio"] == 0.2 and step["layers"] == 1
        assert step["calib_source"] == BUILTIN and step["calib_tokens"] == 1024
        for name, ppl in previewed["perplexity"].items():
            assert applied["perplexity"][name] == pytest.approx(ppl, rel=1e-3), name
        summary, _ = client.predict(api_name="/model_summary")
        assert summary["params"] == student["params"]  # the working model is the student now
    finally:
        client.predict(api_name="/discard_student")
    summary, _ = client.predict(api_name="/model_summary")
    assert summary["params"] == s["params"]


@pytest.mark.parametrize("args, extra, message", [
    ((1.5, 0.0, 0), {}, "Value 1.5 is greater than maximum value 0.9"),   # the slider's range
    ((0.0, -0.1, 0), {}, "Value -0.1 is less than minimum value 0"),
    ((0.0, 0.0, 999), {}, "Value 999 is greater than maximum value"),
    ((0.0, 0.9, 0), {}, "removes every head"),                             # the engine's checks
    ((0.0, 0.9, 0), {"head_mode": "groups"}, "removes every head"),
    ((0.9, 0.0, 0), {"multiple_of": 1024}, "leaves no neuron"),
    ((0.0, 0.0, 2), {"layer_method": "manual", "manual_layers": [0]}, None),  # 'manual' wins: fine
    ((0.1, 0.0, 0), {"method": "nonsense"}, "is not in the list of choices"),
])
def test_bad_settings_give_one_clear_sentence(client, args, extra, message):
    if message is None:
        result = client.predict(*args, **{**FAST, **extra}, api_name="/preview_pruning")
        assert result["plan"]["drop_layers"] == [0]
        return
    with pytest.raises(AppError) as info:
        client.predict(*args, **{**FAST, **extra}, api_name="/preview_pruning")
    assert message in str(info.value)
    assert "Internal error" not in str(info.value)


def test_bad_preview_sets_and_curve_fractions(client):
    with pytest.raises(AppError, match="Both preview sets are off"):
        client.predict(0.1, **{**FAST, "use_general": False, "use_domain": False},
                       api_name="/preview_pruning")
    with pytest.raises(AppError, match="MLP fractions must be"):
        client.predict(**FAST, ratios="0, 1.2", api_name="/pruning_curve")


def test_pruning_curve_rises_with_the_fraction(client, importance):
    rows = client.predict(**{**FAST, "use_domain": False, "reconstruct": False},
                          ratios="0, 0.3", api_name="/pruning_curve")
    assert [(r["ratio"], r["set"], r["method"]) for r in rows] == [
        (0.0, "general", "activation_mix"), (0.3, "general", "activation_mix")]  # the default method
    assert rows[1]["perplexity"] > rows[0]["perplexity"] and rows[1]["params"] < rows[0]["params"]


def test_result_text_warns_when_the_domain_suffers_more_than_the_general_text():
    from components.pruning_logic import describe_preview

    result = {"perplexity": {"general": 45.0, "domain": 77.0},
              "baseline": {"general": 29.0, "domain": 30.0},
              "params": 110_000_000, "params_base": 134_500_000, "est_speedup": 1.22}
    text, warning = describe_preview(result, "builtin:python-docs")
    assert "×2.57" in warning and "×1.55" in warning and "builtin:python-docs" in warning
    assert "110.0M of 134.5M (18% removed)" in text and "×1.22" in text and "⚠️" in text
    even = {**result, "perplexity": {"general": 45.0, "domain": 47.0}}
    assert describe_preview(even, "x")[1] is None
    alone = {**result, "perplexity": {"domain": 77.0}}
    assert describe_preview(alone, "x")[1] is None  # nothing to compare with
