"""The architecture adapter on tiny models of every supported family, and refusals."""
import pytest
import torch

from studio.errors import UnsupportedArchitectureError
from studio.hooks import hook_names, run_with_cache
from studio.models.adapters import adapter_for
from studio.models.loading import load_model
from studio.models.tiny import FAMILIES, TINY


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_every_part(family, tiny_dir):
    loaded = load_model(str(tiny_dir(family)), device="cpu")
    adapter = loaded.adapter
    assert adapter.family == family
    layers = adapter.layers(loaded.model)
    assert len(layers) == TINY["num_hidden_layers"] == adapter.num_layers(loaded.config)
    heads = adapter.head_layout(loaded.config)
    assert (heads.num_heads, heads.num_kv_heads, heads.head_dim) == (4, 2, 16)
    for layer in layers:
        gate, up, down = adapter.glu(layer)
        assert gate.out_features == up.out_features == down.in_features == TINY["intermediate_size"]
        q, k, v, o = adapter.qkvo(layer)
        assert q.out_features == heads.num_heads * heads.head_dim == o.in_features
        assert k.out_features == v.out_features == heads.num_kv_heads * heads.head_dim


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_points_have_documented_shapes(family, tiny_dir):
    loaded = load_model(str(tiny_dir(family)), device="cpu")
    ids = torch.randint(0, 1000, (2, 7))
    logits, cache = run_with_cache(loaded.model, loaded.adapter, ids,
                                   hook_names(loaded.adapter, loaded.config))
    assert cache["layers.0.mlp.act"].shape == (2, 7, 96)
    assert cache["layers.3.attn.head_out"].shape == (2, 7, 4, 16)
    assert cache["layers.2.resid_post"].shape == (2, 7, 64)
    # resid_post of layer i is resid_pre of layer i+1
    assert torch.equal(cache["layers.1.resid_post"], cache["layers.2.resid_pre"])


def _config(kind):
    import transformers as tf

    if kind == "gpt2":
        return tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100)
    if kind == "phi3":
        return tf.Phi3Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                             num_attention_heads=2, vocab_size=100)
    return tf.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                         num_attention_heads=2, vocab_size=100)


@pytest.mark.parametrize("kind,arch", [("gpt2", "gpt2"), ("phi3", "phi3"), ("bert", "bert")])
def test_unsupported_architectures_are_refused_by_name(kind, arch, tmp_path):
    config = _config(kind)
    with pytest.raises(UnsupportedArchitectureError) as err:
        adapter_for(config)
    assert arch in str(err.value) and "llama" in str(err.value)
    config.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError):  # refused at load, before any weights
        load_model(str(tmp_path), device="cpu")
