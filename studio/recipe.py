"""Recipes: every step a session applied, as `recipe.yaml`; validated loading; headless replay.

Legal order (checked by `validate`):
  1. exactly one `load`, first;
  2. any number of `prune` and `distill` steps, in any order among themselves (iterative
     prune → distill → prune cycles are legal);
  3. `lora` steps only after every prune and distill step (an adapter is fitted to the final shape);
  4. at most one `export`, last (optional: `python -m studio run --out DIR` exports anyway).
Unknown top-level keys, unknown step names and, where the step's module declares its settings
(a dataclass config), unknown setting keys raise RecipeError.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import time
from pathlib import Path

import yaml

from studio.errors import RecipeError
from studio.progress import Progress, null_progress, scaled

log = logging.getLogger(__name__)

FORMAT = 1
TOP_KEYS = {"studio_recipe", "steps", "description"}
META_KEYS = {"step", "time", "seconds", "completed_steps", "resume"}  # informational, not settings
# step -> (module under studio, candidate config class names whose fields are the legal keys)
STEP_MODULES = {"prune": ("pruning", ("PruneConfig",)),
                "distill": ("distill", ("DistillConfig",)),
                "lora": ("lora", ("LoraConfig", "LoRAConfig", "LoraSettings"))}
LOAD_KEYS = {"model", "dtype", "trust_remote_code", "allow_pickle"}
ORDER = {"load": 0, "prune": 1, "distill": 1, "lora": 2, "export": 3}


def _plain(value):
    """YAML-safe values: tuples → lists, tensors/paths/other objects → str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def to_yaml(steps: list[dict], description: str = "") -> str:
    doc = {"studio_recipe": FORMAT, "steps": [_plain(s) for s in steps]}
    if description:
        doc["description"] = description
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def write_recipe(steps: list[dict], path: str | Path, description: str = "") -> Path:
    path = Path(path)
    path.write_text(to_yaml(steps, description), encoding="utf-8")
    return path


def step_keys(name: str) -> set[str] | None:
    """Legal setting keys of a step, or None when its module does not declare them (yet)."""
    if name == "load":
        return LOAD_KEYS
    if name == "export":
        from studio.export import ExportConfig

        return set(ExportConfig.__dataclass_fields__)
    module = _module(name, required=False)
    for cls_name in STEP_MODULES[name][1]:
        cls = getattr(module, cls_name, None) if module else None
        if cls is not None and dataclasses.is_dataclass(cls):
            return {f.name for f in dataclasses.fields(cls)} | set(getattr(module, "RECIPE_EXTRA_KEYS", ()))
    return None


def _module(name: str, required: bool = True):
    mod_name = f"studio.{STEP_MODULES[name][0]}"
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name != mod_name:
            raise
        if required:
            raise RecipeError(f"Step '{name}' needs {mod_name}, which this installation does not "
                              "have; update Tailor Studio or remove the step.") from None
        return None


def validate(doc) -> list[dict]:
    """The steps of a parsed recipe, checked; RecipeError names the first problem."""
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise RecipeError("A recipe is a mapping with a 'steps' list; regenerate it from the studio.")
    extra = set(doc) - TOP_KEYS
    if extra:
        raise RecipeError(f"Unknown recipe keys {sorted(extra)}; remove them (allowed are "
                          f"{sorted(TOP_KEYS)}).")
    if doc.get("studio_recipe", FORMAT) != FORMAT:
        raise RecipeError(f"Recipe format {doc.get('studio_recipe')} is not supported (this studio "
                          f"reads format {FORMAT}).")
    steps = doc["steps"]
    if not steps:
        raise RecipeError("The recipe has no steps; it needs at least a 'load' step.")
    last_rank = -1
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or step.get("step") not in ORDER:
            got = step.get("step") if isinstance(step, dict) else step
            raise RecipeError(f"Step {i + 1} ('{got}') is not one of {', '.join(ORDER)}; fix its 'step'.")
        name = step["step"]
        if (i == 0) != (name == "load"):
            raise RecipeError(f"Step {i + 1} is '{name}' but 'load' must be the first step and "
                              "appear only once; move or remove it.")
        if name == "export" and i != len(steps) - 1:
            raise RecipeError(f"Step {i + 1} is 'export' but export must be the last step; move it.")
        if ORDER[name] < last_rank:
            raise RecipeError(f"Step {i + 1} ('{name}') comes after a 'lora' step; move it earlier, as "
                              "prune and distill must come before lora "
                              "(order: load, prune/distill, lora, export).")
        last_rank = max(last_rank, ORDER[name])
        keys = step_keys(name)
        unknown = set(step) - META_KEYS - keys if keys is not None else set()
        if unknown:
            raise RecipeError(f"Step {i + 1} ('{name}') has unknown settings {sorted(unknown)}; "
                              f"remove or rename them (allowed are {sorted(keys)}).")
    if "model" not in steps[0]:
        raise RecipeError("The 'load' step has no 'model'; add e.g. 'model: default'.")
    return steps


def load_recipe(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {path} does not exist; check the path.")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file.") from None
    return validate(doc)


def settings_of(step: dict) -> dict:
    return {k: v for k, v in step.items() if k not in META_KEYS}


class Ranks:
    """The processes of a replay under torchrun / accelerate launch (one process: rank 0 of 1).

    Load and prune run on every rank (each holds the model), rank 0 first so the files it caches
    (calibration statistics, a dequantized default model) are read, not raced, by the others;
    training steps run on every rank together (data parallel through the Trainer); export and
    printing belong to rank 0."""

    def __init__(self, device=None):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():  # the Trainer reuses this group (accelerate's PartialState)
                cuda = device is not None and torch.device(device).type == "cuda"
                if cuda:
                    torch.cuda.set_device(torch.device(device))
                dist.init_process_group("nccl" if cuda else "gloo",
                                        device_id=torch.device(device) if cuda else None)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def rank0_first(self):
        if not self.main:
            self.barrier()
        try:
            yield
        finally:
            if self.main:
                self.barrier()

    def shared(self, value):
        """Rank 0's value on every rank."""
        if self.world < 2:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def same(self, value, what: str) -> None:
        """Refuse to train when the ranks hold different models (a nondeterministic prune)."""
        if self.world < 2:
            return
        import torch.distributed as dist

        values = [None] * self.world
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            raise RecipeError(f"The {self.world} processes hold different models before {what} "
                              "(their load/prune steps disagree); use a deterministic pruning "
                              "method or prune once and start from the saved folder.")


def replay(steps: list[dict], workspace: str | Path, device: str | None = None,
           out: str | Path | None = None, overwrite: bool = False,
           progress: Progress = null_progress, ranks: Ranks | None = None) -> dict:
    """Run a validated recipe in a fresh session: load → prune/distill → lora → export.
    `out` exports (even when the recipe has no export step) to that folder. Under torchrun every
    rank replays load/prune/training and only rank 0 exports (see `Ranks`)."""
    from studio import export
    from studio.session import Session

    session = Session(workspace, device=device)
    ranks = ranks or Ranks(session.device)
    stamp = ranks.shared(time.strftime("%Y%m%d-%H%M%S"))  # one distill run folder for every rank
    n = len(steps) + (1 if out is not None and steps[-1]["step"] != "export" else 0)
    results = []
    for i, step in enumerate(steps):
        part = scaled(progress, i / n, (i + 1) / n)
        name, settings = step["step"], settings_of(step)
        progress(i / n, f"Replaying step {i + 1}/{len(steps)}: {name}")
        if name == "load":
            with ranks.rank0_first():
                session.load(settings["model"], dtype=_dtype(settings.get("dtype")),
                             trust_remote_code=bool(settings.get("trust_remote_code", False)),
                             allow_pickle=bool(settings.get("allow_pickle", False)), progress=part)
            result = {"model": settings["model"]}
        elif name == "export":
            if not ranks.main:
                continue
            result = export.replay_step(session, settings, part, dest=out,
                                        overwrite=True if overwrite else None)
        elif name == "prune":
            with ranks.rank0_first():
                result = _module(name).replay_step(session, settings, part)
        elif name == "distill":
            ranks.same(session.working().fingerprint(), f"step {i + 1} (distill)")
            run_name = f"{settings.get('run_name') or 'run'}-replay-{stamp}-{i}"
            result = _module(name).replay_step(session, settings, part, run_name=run_name)
        else:
            ranks.same(session.working().fingerprint(), f"step {i + 1} ({name})")
            result = _module(name).replay_step(session, settings, part)
        results.append({"step": name, "result": result})
    if out is not None and steps[-1]["step"] != "export" and ranks.main:
        cfg = {"name": Path(out).name, "overwrite": overwrite}
        results.append({"step": "export", "result": export.replay_step(
            session, cfg, scaled(progress, (n - 1) / n, 1.0), dest=out)})
    progress(1.0, "Recipe replayed")
    return {"session": session, "steps": results, "rank": ranks.rank, "world_size": ranks.world}


def _dtype(value):
    """Recorded dtypes look like 'torch.float32'; load wants 'float32' (None = by device)."""
    if not value:
        return None
    return str(value).replace("torch.", "")


def final_metrics(outcome: dict, steps: list[dict], source: str = "", tokens: int | None = None,
                  progress: Progress = null_progress, reference: dict | None = None) -> dict:
    """What `python -m studio run` prints: params, perplexity, the export's verification, and the
    relative perplexity difference to a reference export (its export_info.json) when given."""
    from studio.data import token_blocks
    from studio.evaluation import parameter_count, perplexity

    session = outcome["session"]
    loaded = session.working()
    export_step = next((s for s in steps if s["step"] == "export"), {})
    source = source or export_step.get("eval_source") or "builtin:python-docs"
    tokens = tokens or export_step.get("eval_tokens") or 2048
    block = export_step.get("eval_block") or 256
    exported = next((r["result"] for r in outcome["steps"] if r["step"] == "export"), None)
    if exported and exported.get("perplexity") is not None and \
            (exported.get("eval_source"), exported.get("eval_tokens")) == (source, tokens):
        ppl = exported["perplexity"]
    else:
        blocks = token_blocks(loaded.tokenizer, source, block, tokens)
        ppl = round(perplexity(loaded.model, blocks, progress=progress), 4)
    out = {"steps": [s["step"] for s in steps], "params": parameter_count(loaded.model),
           "perplexity": ppl, "eval_source": source, "eval_tokens": tokens,
           "fingerprint": loaded.fingerprint()}
    if exported:
        out["export"] = {"folder": exported["folder"], "verification": exported["verification"]}
    ref = (reference or {}).get("perplexity")
    if ref:
        out["reference_perplexity"] = ref
        out["perplexity_delta_pct"] = round(100 * (ppl - ref) / ref, 4)
    progress(1.0, f"Final perplexity {ppl}")
    return out
