"""The session: devices, models in memory by role, the recipe of applied steps, jobs, workspace.

Both faces of the studio (Gradio tabs and `python -m studio`) call this object and nothing else
holds model state.
"""
from __future__ import annotations

import copy
import gc
import logging
import os
import threading
import time
from pathlib import Path

import torch

from studio.errors import StudioError
from studio.evaluation import model_bytes, parameter_count
from studio.jobs import Job, JobQueue
from studio.models.loading import DEFAULT_SPEC, LoadedModel, load_model, pick_device
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

BASE, STUDENT = "base", "student"


class Session:
    """Owns devices, models by role (base = teacher, student = working copy, ...), jobs, workspace."""

    def __init__(self, workspace: str | Path = "workspace", device: str | None = None,
                 memory_limit_bytes: int | None = None):
        self.workspace = Path(workspace).resolve()
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
            probe = self.workspace / f".write-test-{os.getpid()}"  # per process: torchrun ranks share it
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StudioError(f"Workspace {self.workspace} is not writable ({exc.strerror}); "
                              "choose another folder with --workspace.") from None
        self.device = pick_device(device)
        self.memory_limit_bytes = memory_limit_bytes
        self.models: dict[str, LoadedModel] = {}
        self.recipe: list[dict] = []
        self.jobs = JobQueue(self.workspace / "jobs")
        self.cache: dict = {}  # computed statistics keyed by (fingerprint, source, tokens, ...)
        self.lock = threading.RLock()  # guards models/recipe against concurrent tab handlers

    # -- paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the workspace; names with '..' or absolute parts are refused."""
        for part in parts:
            if not part or Path(part).is_absolute() or ".." in Path(part).parts:
                raise StudioError(f"Name '{part}' is not allowed; use a plain name inside the "
                                  "workspace (no '..', no absolute path).")
        path = self.workspace.joinpath(*parts).resolve()
        if self.workspace not in path.parents and path != self.workspace:
            raise StudioError(f"Name '{'/'.join(parts)}' points outside the workspace; use a plain name.")
        return path

    # -- models ----------------------------------------------------------------------------
    def load(self, spec: str = DEFAULT_SPEC, role: str = BASE, dtype=None,
             trust_remote_code: bool = False, allow_pickle: bool = False,
             progress: Progress = null_progress) -> LoadedModel:
        """Load a model into a role; loading a new base drops the old base and its student."""
        self._guard_memory(spec)
        loaded = load_model(spec, device=str(self.device), dtype=dtype,
                            trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                            progress=progress)
        with self.lock:
            if role == BASE:
                for old in list(self.models):
                    self.unload(old)
                # the security ticks are part of the recipe: a replay asks for the same consent
                self.recipe = [{"step": "load", "model": spec, "dtype": str(loaded.dtype),
                                "trust_remote_code": bool(trust_remote_code),
                                "allow_pickle": bool(allow_pickle)}]
            else:
                self.unload(role)
            self.models[role] = loaded
        return loaded

    def _guard_memory(self, spec: str) -> None:
        """Refuse a load that would not fit the memory budget (an OOM guard that also works on CPU)."""
        if self.memory_limit_bytes is None:
            return
        from studio.models.loading import resolve_spec

        where, _ = resolve_spec(spec)
        weights = sum(p.stat().st_size for p in Path(where).glob("*.safetensors")) \
            if Path(where).is_dir() else 0
        self.ensure_memory(weights, f"loading {spec}")

    def _models_bytes(self) -> int:
        return sum(model_bytes(m.model) for m in self.models.values())

    def has_room(self, extra_bytes: int) -> bool:
        """Whether extra_bytes more fit the memory budget and, on CUDA, the free device memory."""
        if self.memory_limit_bytes is not None and \
                self._models_bytes() + extra_bytes > self.memory_limit_bytes:
            return False
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return extra_bytes < 0.8 * free
        return True

    def ensure_memory(self, extra_bytes: int, what: str) -> None:
        """Raise before work that would push the models past the memory budget."""
        if self.memory_limit_bytes is None:
            return
        used = self._models_bytes()
        if used + extra_bytes > self.memory_limit_bytes:
            raise StudioError(
                f"Out of memory: {what} needs about {extra_bytes >> 20} MiB more but the models "
                f"already use {used >> 20} MiB of the {self.memory_limit_bytes >> 20} MiB allowed; "
                "unload a model or raise --memory-limit-mib.")

    def has(self, role: str) -> bool:
        return role in self.models

    def get(self, role: str = BASE) -> LoadedModel:
        if role not in self.models:
            hint = "load a model first (Model tab or --model)" if role == BASE else \
                f"create the {role} first"
            raise StudioError(f"No '{role}' model in the session; {hint}.")
        return self.models[role]

    def working(self) -> LoadedModel:
        """The model the next step works on: the student when there is one, else the base."""
        return self.models.get(STUDENT) or self.get(BASE)

    def set_model(self, role: str, loaded: LoadedModel) -> None:
        with self.lock:
            if role in self.models and self.models[role] is not loaded:
                self.unload(role)
            self.models[role] = loaded

    def copy_of(self, role: str = BASE) -> LoadedModel:
        source = self.get(role)
        self.ensure_memory(model_bytes(source.model), f"copying the {role} model")
        return LoadedModel(model=copy.deepcopy(source.model), tokenizer=source.tokenizer,
                           adapter=source.adapter, spec=source.spec, source=source.source,
                           origin=source.origin, history=list(source.history))

    def unload(self, role: str) -> None:
        """Drop a model and give its memory back (CUDA cache emptied too)."""
        with self.lock:
            loaded = self.models.pop(role, None)
        if loaded is None:
            return
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def record(self, step: dict) -> None:
        with self.lock:
            self.recipe.append({**step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, name: str, fn, heavy: bool = True) -> Job:
        return self.jobs.submit(name, fn, device=str(self.device), heavy=heavy)

    # -- reporting -------------------------------------------------------------------------
    def summary(self, role: str = BASE) -> dict:
        return model_summary(self.get(role))

    def devices(self) -> list[dict]:
        out = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                out.append({"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i),
                            "total_mib": total >> 20, "used_mib": (total - free) >> 20,
                            "free_mib": free >> 20,
                            "allocated_mib": torch.cuda.memory_allocated(i) >> 20})
        total, free = _host_memory()
        out.append({"device": "cpu", "name": f"{os.cpu_count()} cores", "total_mib": total >> 20,
                    "used_mib": (total - free) >> 20, "free_mib": free >> 20,
                    "process_rss_mib": _process_rss() >> 20})
        return out

    def status(self) -> dict:
        with self.lock:
            models = {role: {"spec": m.spec, "params": parameter_count(m.model),
                             "memory_mib": round(model_bytes(m.model) / 2**20, 1),
                             "device": str(m.device), "dtype": str(m.dtype).replace("torch.", ""),
                             "steps": len(m.history)}
                      for role, m in self.models.items()}
        return {"workspace": str(self.workspace), "devices": self.devices(), "models": models,
                "jobs": self.jobs.listing(), "recipe_steps": [s["step"] for s in self.recipe]}


def model_summary(loaded: LoadedModel) -> dict:
    config, adapter = loaded.config, loaded.adapter
    heads = adapter.head_layout(config)
    return {"family": adapter.family, "model_type": config.model_type, "spec": loaded.spec,
            "origin": loaded.origin, "layers": adapter.num_layers(config),
            "hidden_size": config.hidden_size, "glu_width": adapter.intermediate_size(config),
            "query_heads": heads.num_heads, "kv_heads": heads.num_kv_heads,
            "head_dim": heads.head_dim, "vocab_size": config.vocab_size,
            "params": parameter_count(loaded.model),
            "dtype": str(loaded.dtype).replace("torch.", ""), "device": str(loaded.device),
            "memory_mib": round(model_bytes(loaded.model) / 2**20, 1),
            "fingerprint": loaded.fingerprint()}


def _host_memory() -> tuple[int, int]:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(info["MemTotal"].split()[0]) << 10, int(info["MemAvailable"].split()[0]) << 10
    except (OSError, KeyError, ValueError):
        return 0, 0


def _process_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0
