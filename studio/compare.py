"""Every model in the session side by side: size, perplexity, task scores, speed, memory;
and one prompt answered by every model (timed)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd
import torch

from studio.data import token_blocks
from studio.evaluation import (forward_tokens_per_second, generate, model_bytes, parameter_count,
                               perplexity)
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

COLUMNS = ["role", "params", "params_pct", "disk_mib", "ppl_general", "ppl_domain",
           "forward_tok_s", "ttft_s", "gen_tok_s", "peak_mem_mib"]
ROLE_ORDER = ["base", "student", "lora"]


@dataclass
class CompareConfig:
    general_source: str = "builtin:python-docs"
    domain_source: str = ""          # e.g. pubmedqa:../shared/data/pubmedqa/ori_pqal.json:test
    eval_tokens: int = 2048
    block: int = 256
    prompt: str = "Explain in one sentence what a neural network is."
    gen_tokens: int = 16
    roles: tuple = ()                # empty = every model in the session


def session_roles(session, roles=()) -> list[str]:
    present = list(session.models)
    chosen = [r for r in (roles or present) if r in present]
    return sorted(chosen, key=lambda r: (ROLE_ORDER.index(r) if r in ROLE_ORDER else 99, r))


def task_scores(session, loaded) -> dict:
    """lm-eval scores computed earlier for this exact model ({task: score})."""
    return dict(session.cache.get("lm_eval", {}).get(loaded.fingerprint(), {}))


def _peak_memory(model, blocks: torch.Tensor, device: torch.device) -> float:
    """Peak memory of one forward pass (CUDA: measured allocator peak; CPU: weight bytes, as
    the CPU allocator keeps no per-model peak)."""
    if device.type != "cuda":
        return model_bytes(model) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        model(input_ids=blocks[:1].to(device), use_cache=False)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _disk_mib(session, loaded) -> float:
    """Exported folder size when this model was exported, else its safetensors size (weights)."""
    from studio.evaluation import folder_bytes

    folder = session.cache.get("exports", {}).get(loaded.fingerprint())
    if folder:
        from pathlib import Path

        if Path(folder).is_dir():
            return folder_bytes(folder) / 2**20
    return sum(p.numel() * p.element_size() for p in _unique(loaded.model.parameters())) / 2**20


def _unique(tensors):
    seen = set()
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            yield t


def model_row(session, role: str, config: CompareConfig, base_params: int | None,
              should_stop=lambda: False) -> dict:
    loaded = session.get(role)
    key = ("compare", loaded.fingerprint(), config.general_source, config.domain_source,
           config.eval_tokens, config.block, config.prompt, config.gen_tokens)
    if key in session.cache:
        return {**session.cache[key], **_task_columns(session, loaded)}
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    params = parameter_count(model)
    row = {"role": role, "params": params,
           "params_pct": round(100 * params / base_params, 1) if base_params else 100.0,
           "disk_mib": round(_disk_mib(session, loaded), 1)}
    general = token_blocks(tok, config.general_source, config.block, config.eval_tokens)
    row["ppl_general"] = round(perplexity(model, general, should_stop=should_stop), 3)
    if config.domain_source:
        domain = token_blocks(tok, config.domain_source, config.block, config.eval_tokens)
        row["ppl_domain"] = round(perplexity(model, domain, should_stop=should_stop), 3)
    else:
        row["ppl_domain"] = None
    row["forward_tok_s"] = round(forward_tokens_per_second(model, general[:2]), 1)
    gen = generate(model, tok, config.prompt, max_new_tokens=config.gen_tokens)
    row["ttft_s"], row["gen_tok_s"] = gen["time_to_first_token_s"], gen["tokens_per_s"]
    row["peak_mem_mib"] = round(_peak_memory(model, general, device), 1)
    session.cache[key] = row
    return {**row, **_task_columns(session, loaded)}


def _task_columns(session, loaded) -> dict:
    return {f"task:{name}": score for name, score in task_scores(session, loaded).items()}


def compare_models(session, config: CompareConfig = CompareConfig(),
                   progress: Progress = null_progress, should_stop=lambda: False) -> pd.DataFrame:
    """One row per model in the session (cached per model fingerprint and settings)."""
    roles = session_roles(session, config.roles)
    base_params = parameter_count(session.get("base").model) if session.has("base") else None
    rows = []
    for i, role in enumerate(roles):
        if should_stop():
            break
        progress(i / max(len(roles), 1), f"Evaluating {role} ({i + 1}/{len(roles)})")
        rows.append(model_row(session, role, config, base_params, should_stop))
    progress(1.0, f"Compared {len(rows)} models")
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame.reindex(columns=[*COLUMNS, *extra])


def side_by_side(session, prompt: str, max_new_tokens: int = 48, do_sample: bool = False,
                 temperature: float = 0.7, seed: int = 0, roles=()) -> list[dict]:
    """The same prompt answered by every model (greedy by default), with timings."""
    out = []
    for role in session_roles(session, roles):
        loaded = session.get(role)
        started = time.perf_counter()
        result = generate(loaded.model, loaded.tokenizer, prompt, max_new_tokens=max_new_tokens,
                          do_sample=do_sample, temperature=temperature, seed=seed)
        out.append({"role": role, "prompt": prompt, **result, "wall_s": round(time.perf_counter() - started, 3)})
    return out


def save_csv(session, frame: pd.DataFrame, name: str = "comparison.csv"):
    path = session.path("reports", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
