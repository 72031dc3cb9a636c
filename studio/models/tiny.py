"""Tiny random models of every supported family, built from configs (no download).

They exercise shapes and architecture coverage in tests and benchmarks; quality checks use the
real default model. Their tokenizer is the default model's (a real BPE tokenizer).
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def tiny_config(family: str, vocab_size: int, **overrides):
    import transformers as tf

    kw = {**TINY, "vocab_size": vocab_size, **overrides}
    if family == "llama":
        return tf.LlamaConfig(**kw)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=None, **kw)
    if family == "qwen2":
        return tf.Qwen2Config(**kw)
    if family == "qwen3":
        return tf.Qwen3Config(**kw)
    if family == "gemma":
        return tf.GemmaConfig(hidden_activation="gelu_pytorch_tanh", **kw)
    if family == "gemma2":
        return tf.Gemma2Config(sliding_window=16, query_pre_attn_scalar=16, **kw)
    if family == "gemma3":
        return tf.Gemma3TextConfig(sliding_window=16, query_pre_attn_scalar=16,
                                   layer_types=["sliding_attention", "sliding_attention",
                                                "full_attention", "sliding_attention"], **kw)
    raise ValueError(f"no tiny config for family {family!r}")


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")


def build_tiny(family: str, folder: str | Path, tokenizer=None, seed: int = 0, **overrides) -> Path:
    """Write a tiny random checkpoint of `family` (with a tokenizer) into folder."""
    from transformers import AutoModelForCausalLM

    if tokenizer is None:
        from studio.models.loading import load_tokenizer_of_default
        tokenizer = load_tokenizer_of_default()
    torch.manual_seed(seed)
    config = tiny_config(family, vocab_size=len(tokenizer), **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norms so masking bugs cannot hide behind all-ones weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
