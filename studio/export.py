"""Atomic export: save → verify (plain transformers reload, logits match) → model card → rename.

A checkpoint is written into a hidden temporary folder next to its destination, reloaded with plain
`AutoModelForCausalLM.from_pretrained` (no remote code) and compared on a fixed input; only a
verified folder is renamed into place, so a failed export never leaves a half-written folder.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from studio.errors import ExportError
from studio.evaluation import folder_bytes, parameter_count
from studio.models.loading import LoadedModel, strip_quantizer
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

EXPORTS = "exports"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERIFY_TEXT = "The quick brown fox jumps over the lazy dog. Tailored models should still know that"
QUANT_KEYS = ("quantization_config", "quantization", "gguf_file")


@dataclass
class ExportConfig:
    name: str
    role: str = "working"          # "working" (student if any, else base) or a session role
    overwrite: bool = False
    tolerance: float = 1e-4        # max |Δ logits| in float32 between in-memory and reloaded model
    eval_source: str = "builtin:python-docs"  # perplexity written into the card ("" = skip)
    eval_tokens: int = 2048
    eval_block: int = 256


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_RE.match(name) or ".." in name:
        raise ExportError(f"Export name '{name}' is not allowed; use letters, digits, '.', '_' or '-' "
                          "(no '/', no '..', at most 100 characters).")
    return name


def export_folder(session, name: str) -> Path:
    return session.path(EXPORTS, check_name(name))


def pick_model(session, role: str) -> LoadedModel:
    return session.working() if role in ("", "working", None) else session.get(role)


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model to save: PEFT adapters merged into a copy; GGUF quantizer leftovers removed."""
    if hasattr(model, "merge_and_unload"):  # an unmerged PEFT model: export the merged weights
        model = copy.deepcopy(model).merge_and_unload()
    if getattr(model, "hf_quantizer", None) is not None or hasattr(model.config, "quantization_config"):
        strip_quantizer(model)
    return model


def clean_config_file(folder: Path) -> None:
    """Drop quantization leftovers from config.json (a GGUF-loaded model must export as float)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if any(k in config for k in QUANT_KEYS):
        for key in QUANT_KEYS:
            config.pop(key, None)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_checkpoint(loaded: LoadedModel, folder: Path) -> None:
    """save_pretrained (safetensors) + tokenizer + generation config into folder."""
    model = plain_model(loaded.model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    clean_config_file(folder)


def verify_input(tokenizer, vocab_size: int, device) -> torch.Tensor:
    ids = tokenizer(VERIFY_TEXT, add_special_tokens=False)["input_ids"][:32]
    ids = [i % vocab_size for i in ids] or [0, 1, 2]
    return torch.tensor([ids], dtype=torch.long, device=device)


@torch.no_grad()
def verify_checkpoint(loaded: LoadedModel, folder: Path, tolerance: float = 1e-4) -> dict:
    """Reload with plain transformers (no remote code) and compare logits on a fixed input."""
    from transformers import AutoModelForCausalLM

    model = plain_model(loaded.model)
    device, dtype = loaded.device, loaded.dtype
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=False)
    except Exception as exc:  # any reload failure means the export is not usable as-is
        raise ExportError(f"The exported folder does not load with plain transformers "
                          f"({str(exc).splitlines()[0][:200]}); the export was discarded.") from exc
    reloaded.to(device).eval()
    ids = verify_input(loaded.tokenizer, model.config.vocab_size, device)
    was_training = model.training
    model.eval()
    try:
        ours = model(input_ids=ids, use_cache=False).logits.float()
        theirs = reloaded(input_ids=ids, use_cache=False).logits.float()
    finally:
        model.train(was_training)
    diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("inf")
    del reloaded
    return {"passed": bool(diff < tolerance), "max_abs_diff": diff, "tolerance": tolerance,
            "tokens": int(ids.shape[1]), "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "loader": "AutoModelForCausalLM.from_pretrained (no remote code)"}


def export_perplexity(loaded: LoadedModel, config: ExportConfig) -> float | None:
    if not config.eval_source:
        return None
    from studio.data import token_blocks
    from studio.evaluation import perplexity

    blocks = token_blocks(loaded.tokenizer, config.eval_source, config.eval_block, config.eval_tokens)
    return round(perplexity(loaded.model, blocks), 4)


def export_model(session, config: ExportConfig, progress: Progress = null_progress,
                 dest: Path | None = None, evaluation: list[dict] | None = None) -> dict:
    """Write, verify and publish a checkpoint of config.role under workspace/exports/<name>
    (or `dest`, for the CLI's --out); returns what the card says (verification, sizes, metrics)."""
    from studio import model_card, recipe

    dest = Path(dest).resolve() if dest is not None else export_folder(session, config.name)
    loaded = pick_model(session, config.role)
    if dest.exists() and not config.overwrite:
        raise ExportError(f"{dest} already exists; pick another name or allow overwriting ('overwrite' box, --overwrite).")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}")
    step = {"step": "export", **asdict(config)}
    started = time.time()
    try:
        progress(0.05, f"Saving {loaded.spec} to a temporary folder")
        save_checkpoint(loaded, tmp)
        progress(0.45, "Verifying: reloading with plain transformers")
        verification = verify_checkpoint(loaded, tmp, config.tolerance)
        if not verification["passed"]:
            raise ExportError(f"Verification failed: reloaded logits differ by "
                              f"{verification['max_abs_diff']:.3g} (allowed {config.tolerance:g}); "
                              "the export was discarded, check the model for unsaved changes.")
        progress(0.7, "Measuring perplexity for the card")
        ppl = export_perplexity(loaded, config)
        info = {"name": dest.name, "folder": str(dest), "verification": verification,
                "params": parameter_count(loaded.model), "perplexity": ppl,
                "eval_source": config.eval_source, "eval_tokens": config.eval_tokens,
                "base_params": _base_params(session), "origin": loaded.origin or loaded.spec,
                "evaluation": evaluation or []}
        steps = [*session.recipe, step]
        recipe.write_recipe(steps, tmp / "recipe.yaml")
        progress(0.85, "Writing the model card")
        model_card.write_card(tmp, info, steps)
        info["bytes"] = folder_bytes(tmp)
        (tmp / "export_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        _publish(tmp, dest, config.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    session.record(step)
    session.cache.setdefault("exports", {})[loaded.fingerprint()] = str(dest)
    session.cache.setdefault("export_results", []).append(
        {"folder": str(dest), "verification": verification, "perplexity": ppl})
    info["seconds"] = round(time.time() - started, 2)
    info["files"] = sorted(p.name for p in dest.iterdir())
    progress(1.0, f"Exported to {dest} (verified, max |Δ| {verification['max_abs_diff']:.2e})")
    return info


def _base_params(session) -> int | None:
    return parameter_count(session.get("base").model) if session.has("base") else None


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Rename the verified folder into place; an old folder is only removed once the new one is in."""
    old = None
    if dest.exists():
        if not overwrite:
            raise ExportError(f"{dest} already exists; pick another name or allow overwriting ('overwrite' box, --overwrite).")
        old = dest.with_name(f".{dest.name}.old-{int(time.time() * 1000)}")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def zip_folder(folder: str | Path) -> Path:
    """A .zip of an export folder next to it (for the UI's download); weights are stored, not
    deflated (float tensors barely compress and deflating hundreds of MiB is slow)."""
    import zipfile

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} is not an exported checkpoint; export the model first.")
    archive = folder.with_name(folder.name + ".zip")
    tmp = archive.with_name(f".{archive.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as handle:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            method = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
            handle.write(path, f"{folder.name}/{path.relative_to(folder)}", compress_type=method)
    tmp.replace(archive)
    return archive


def push_to_hub(folder: str | Path, repo_id: str, token: str, private: bool = True) -> str:
    """Upload an export folder to the Hugging Face Hub; returns the repo URL."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} is not an exported checkpoint; export the model first.")
    if not re.match(r"^[\w.-]+/[\w.-]+$", repo_id or ""):
        raise ExportError(f"Repository id '{repo_id}' is not of the form 'user/name'; fix it.")
    if not token:
        raise ExportError("Pushing to the Hub needs a write token; paste one from "
                          "huggingface.co/settings/tokens.")
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload tailored model from Tailor Studio")
    except Exception as exc:  # network, auth and offline errors all end the same way for the user
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ExportError(f"Could not push to the Hub repository '{repo_id}' ({first}); check the "
                          "network connection and that the token has write access.") from exc
    return str(url)


def replay_step(session, settings: dict, progress: Progress = null_progress,
                dest: Path | None = None, overwrite: bool | None = None) -> dict:
    """Recipe replay: export with the recorded settings (dest/overwrite override them)."""
    known = set(ExportConfig.__dataclass_fields__)
    config = ExportConfig(**{k: v for k, v in settings.items() if k in known})
    if overwrite is not None:
        config.overwrite = overwrite
    return export_model(session, config, progress, dest=dest)
