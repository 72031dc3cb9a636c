"""Loading the embedded default model and refusing bad model specs with one clear sentence."""
import shutil
import time

import pytest

from studio.errors import ModelLoadError
from studio.models.loading import _gguf_cache_folder, default_gguf_path, load_model
from studio.session import model_summary


def test_default_model_summary(default_model):
    s = model_summary(default_model)
    assert (s["layers"], s["query_heads"], s["kv_heads"], s["glu_width"]) == (30, 9, 3, 1536)
    assert s["family"] == "llama" and s["hidden_size"] == 576 and s["head_dim"] == 64
    assert abs(s["params"] - 134.5e6) < 0.1e6
    assert s["dtype"] == "float32" and s["device"] == "cpu"
    assert getattr(default_model.model, "hf_quantizer", None) is None  # exportable
    assert not hasattr(default_model.config, "quantization_config")


def test_default_is_cached_as_float_safetensors(default_model):
    folder = _gguf_cache_folder(default_gguf_path())
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    started = time.time()
    load_model("default", device="cpu")
    assert time.time() - started < 15  # the ~15 s dequantization is not repeated


@pytest.mark.parametrize("spec,needle", [
    ("", "No model given"),
    ("./does/not/exist", "neither an existing path"),
    ("missing.gguf", "does not exist"),
    ("nobody/such-model-xyz", "Hub"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(ModelLoadError) as err:
        load_model(spec, device="cpu")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a checkpoint folder"):
        load_model(str(tmp_path), device="cpu")


def test_truncated_safetensors(tmp_path, tiny_dir):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_dir("llama"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(str(folder), device="cpu")


def test_truncated_gguf(tmp_path):
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(default_gguf_path().read_bytes()[:200_000])
    with pytest.raises(ModelLoadError, match="GGUF"):
        load_model(str(gguf), device="cpu")


def test_pickle_weights_need_consent(tmp_path, tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir("llama"))
    model.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(str(tmp_path), device="cpu")
