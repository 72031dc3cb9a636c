"""Perplexity reference, determinism, size and generation on the default model."""
from studio.data import token_blocks
from studio.evaluation import generate, parameter_count, perplexity
from tests.conftest import WIKI_TEST, need_data


def test_default_wikitext_perplexity_matches_reference(default_model):
    blocks = token_blocks(default_model.tokenizer, str(need_data(WIKI_TEST)), 512, 8192)
    ppl = perplexity(default_model.model, blocks)
    assert abs(ppl - 29.6) / 29.6 < 0.02, ppl


def test_perplexity_is_deterministic_and_batch_independent(default_model):
    blocks = token_blocks(default_model.tokenizer, "builtin:python-docs", 128, 512)
    a = perplexity(default_model.model, blocks, batch_size=1)
    b = perplexity(default_model.model, blocks, batch_size=4)
    assert abs(a - b) / a < 1e-4


def test_parameter_count_counts_tied_weights_once(default_model):
    raw = sum(p.numel() for p in default_model.model.parameters())
    assert parameter_count(default_model.model) == raw  # parameters() already dedups
    assert abs(parameter_count(default_model.model) - 134_515_008) == 0


def test_greedy_generation_uses_chat_template(default_model):
    out = generate(default_model.model, default_model.tokenizer, "What is the capital of France?", 12)
    assert "Paris" in out["text"]
    assert out["new_tokens"] > 0 and out["tokens_per_s"] > 0
