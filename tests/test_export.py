"""Export: verified, atomic, plain-transformers-loadable checkpoints; model card; zip; hub push."""
from __future__ import annotations

import json

import pytest
import torch

from studio.errors import ExportError
from studio.export import ExportConfig, export_model, push_to_hub, zip_folder
from studio.models.loading import LoadedModel, default_gguf_path
from studio.session import Session


def _session_with(tmp_path, loaded: LoadedModel, role="base", spec="default") -> Session:
    session = Session(tmp_path / "workspace", device=str(loaded.device))
    session.set_model(role, loaded)
    session.recipe = [{"step": "load", "model": spec, "dtype": "float32", "trust_remote_code": False}]
    return session


@torch.no_grad()
def _plain_reload_diff(folder, loaded: LoadedModel) -> tuple[float, object]:
    """Reload with plain transformers (no remote code) and compare on an input of the test's own."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = loaded.tokenizer("Pruned models should still answer questions about Paris.",
                           return_tensors="pt")["input_ids"]
    ours = loaded.model(input_ids=ids.to(loaded.device)).logits.float().cpu()
    theirs = reloaded(input_ids=ids).logits.float()
    return (ours - theirs).abs().max().item(), reloaded.config


@pytest.fixture(scope="module")
def gguf_loaded(tokenizer):
    """The default model loaded straight from its GGUF: transformers leaves a quantizer and a
    quantization_config on it, the leftovers an export must not carry."""
    from transformers import AutoModelForCausalLM

    from studio.models.adapters import adapter_for

    gguf = default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter_for(model.config),
                       spec=str(gguf), source=str(gguf), origin="HuggingFaceTB/SmolLM2-135M-Instruct")


def _has_quant_leftovers(model) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or hasattr(model.config, "quantization_config")


def test_pruned_gguf_loaded_default_model_exports_reloads_and_matches(tmp_path, gguf_loaded):
    """GGUF-loaded default model, 25% of its GLU neurons pruned (studio.pruning), exported as a
    plain float safetensors checkpoint that plain transformers loads with matching logits."""
    from studio.pruning import PruneConfig, apply

    assert _has_quant_leftovers(gguf_loaded.model)  # the leftovers this test is about
    session = _session_with(tmp_path, gguf_loaded, spec=gguf_loaded.spec)
    student = apply(session, PruneConfig(mlp_ratio=0.25, method="l2", reconstruct=False,
                                         calib_source="", calib_tokens=0))
    assert student.config.intermediate_size == 1152
    evaluation = [{"role": "base", "params": 134_515_008, "ppl_general": 10.0},
                  {"role": "student", "params": info_params(student), "ppl_general": 12.0,
                   "task:pubmedqa_local": 0.5}]
    info = export_model(session, ExportConfig(name="smol-pruned", eval_tokens=512),
                        evaluation=evaluation)
    folder = session.path("exports", "smol-pruned")
    assert info["verification"]["passed"] and info["verification"]["max_abs_diff"] < 1e-4
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and "gguf_file" not in config
    assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.gguf"))
    diff, reloaded_config = _plain_reload_diff(folder, student)
    assert diff < 1e-4 and reloaded_config.intermediate_size == 1152
    # the model card parses with huggingface_hub and lists the metrics, tags and verification
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "pruned" in data["tags"] and "perplexity" in data["metrics"] and "accuracy" in data["metrics"]
    assert "passed" in card.text and "fewer" in card.text and "ppl_general" in card.text
    assert (folder / "charts" / "parameters.svg").read_text().startswith("<svg")
    assert "step: prune" in (folder / "recipe.yaml").read_text()


def info_params(loaded) -> int:
    from studio.evaluation import parameter_count

    return parameter_count(loaded.model)


def test_zip_of_an_export(tiny_session):
    import zipfile

    session = tiny_session("llama")
    info = export_model(session, ExportConfig(name="zipped", eval_source=""))
    names = zipfile.ZipFile(zip_folder(info["folder"])).namelist()
    assert "zipped/config.json" in names and "zipped/model.safetensors" in names
    assert "zipped/README.md" in names and "zipped/recipe.yaml" in names


def test_failed_verification_leaves_no_half_folder(tmp_path, tiny_session, monkeypatch):
    import studio.export as export

    session = tiny_session("llama")
    first = export_model(session, ExportConfig(name="kept", eval_source=""))
    original = (session.path("exports", "kept") / "model.safetensors").read_bytes()

    def failing(loaded, folder, tolerance=1e-4):  # fault injection: the reload "differs"
        assert folder.is_dir() and folder.name.startswith(".")
        return {**first["verification"], "passed": False, "max_abs_diff": 0.5}

    monkeypatch.setattr(export, "verify_checkpoint", failing)
    with pytest.raises(ExportError, match="Verification failed"):
        export_model(session, ExportConfig(name="broken", eval_source=""))
    with pytest.raises(ExportError, match="Verification failed"):
        export_model(session, ExportConfig(name="kept", overwrite=True, eval_source=""))
    exports = session.path("exports")
    assert sorted(p.name for p in exports.iterdir()) == ["kept"]  # no tmp, no half folder
    assert (exports / "kept" / "model.safetensors").read_bytes() == original


def test_existing_folder_needs_overwrite_and_names_are_sanitised(tmp_path, tiny_session):
    session = tiny_session("qwen3")
    export_model(session, ExportConfig(name="q", eval_source=""))
    with pytest.raises(ExportError, match="already exists"):
        export_model(session, ExportConfig(name="q", eval_source=""))
    info = export_model(session, ExportConfig(name="q", overwrite=True, eval_source=""))
    assert info["verification"]["passed"] and info["perplexity"] is None
    for bad in ("../escape", "/abs/path", "a/b", "..", ""):
        with pytest.raises(ExportError, match="not allowed"):
            export_model(session, ExportConfig(name=bad, eval_source=""))
    assert not (tmp_path / "escape").exists()


def test_push_to_hub_offline_fails_with_one_sentence(tiny_session, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    session = tiny_session("llama")
    info = export_model(session, ExportConfig(name="to-push", eval_source=""))
    with pytest.raises(ExportError) as err:
        push_to_hub(info["folder"], "someone/tailored", token="hf_fake", private=True)
    message = str(err.value)
    assert "Could not push" in message and "network" in message and "\n" not in message
    with pytest.raises(ExportError, match="user/name"):
        push_to_hub(info["folder"], "not a repo", token="x")
