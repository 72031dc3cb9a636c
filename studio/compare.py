"""Every model in the session side by side: size, perplexity, task scores, speed, memory;
and one prompt answered by every model (timed).

Distillation and LoRA merging change the student in place, so the table keeps the rows it has
measured: every row is remembered under the workspace (`compare/rows.json`) with the model's
lineage (its source plus each prefix of its step history), and a later comparison shows the rows
of the current models' earlier states ("student (pruned)") before the current ones
("student (pruned → distilled)") without keeping those models in memory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
ROWS_FILE = ("compare", "rows.json")
PAST = {"prune": "pruned", "distill": "distilled", "lora": "LoRA-merged"}


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


def model_key(loaded) -> str:
    """The model's fingerprint; an unmerged adapter (role 'lora') shares its base's config and
    history, so it is marked apart (its scores and rows are its own)."""
    return loaded.fingerprint() + _adapter_suffix(loaded)


def task_scores(session, loaded) -> dict:
    """lm-eval scores computed earlier for this exact model ({task: score})."""
    return dict(session.cache.get("lm_eval", {}).get(model_key(loaded), {}))


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    return 0


def _cpu_forward_peak(model, blocks: torch.Tensor) -> float:
    """Weight bytes + the process's resident-memory growth during one forward pass, sampled every
    2 ms (CPU allocators keep no peak counter; other threads' allocations count too)."""
    if not Path("/proc/self/status").is_file():  # not Linux: the weights alone
        return float(model_bytes(model))
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss_bytes() - base)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with torch.no_grad():
            model(input_ids=blocks[:1], use_cache=False)
    finally:
        done.set()
        sampler.join()
    return float(model_bytes(model) + max(peak[0], _rss_bytes() - base, 0))


def _peak_memory(model, blocks: torch.Tensor, device: torch.device) -> float:
    """Peak memory of one forward pass in MiB (CUDA: the allocator's peak; CPU: weights + sampled
    resident-memory growth)."""
    if device.type != "cuda":
        return _cpu_forward_peak(model, blocks) / 2**20
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


def _settings_key(config: CompareConfig) -> str:
    """Rows measured with other sources or lengths are not comparable; this tells them apart."""
    return json.dumps([config.general_source, config.domain_source, config.eval_tokens,
                       config.block, config.prompt, config.gen_tokens])


def _adapter_suffix(loaded) -> str:
    """An unmerged adapter (role 'lora') shares its base's config and history: mark it apart."""
    return "+adapter" if hasattr(loaded.model, "peft_config") else ""


def lineage(loaded) -> list[str]:
    """Identity of each state the model went through: a digest of (source, history[:k]) for
    k = 0..len(history); the last one is the model as it is now."""
    out = []
    for k in range(len(loaded.history) + 1):
        payload = json.dumps([loaded.source, loaded.history[:k]], sort_keys=True, default=str)
        out.append(hashlib.sha1(payload.encode()).hexdigest()[:16])
    out[-1] += _adapter_suffix(loaded)
    return out


def state_label(role: str, history: list) -> str:
    """'base', 'student (pruned → distilled)', 'lora (pruned)': the role and the steps behind it
    (a resumed distillation is the same run, so it is not named twice)."""
    words = []
    for entry in history:
        step = entry.get("step") if isinstance(entry, dict) else str(entry)
        if isinstance(entry, dict) and step == "distill" and entry.get("resume"):
            continue
        words.append(PAST.get(step, str(step)))
    return f"{role} ({' → '.join(words)})" if words else role


def _rows_path(session):
    return session.path(*ROWS_FILE)


def load_rows(session) -> list[dict]:
    """Every row measured in this workspace (a missing or damaged file reads as none)."""
    path = _rows_path(session)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


def _remember(session, entry: dict) -> None:
    """Add (or replace) one measured row in compare/rows.json, written atomically."""
    with session.lock:
        rows = [r for r in load_rows(session)
                if (r.get("state"), r.get("settings")) != (entry["state"], entry["settings"])]
        rows.append(entry)
        path = _rows_path(session)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
        tmp.replace(path)


def model_row(session, role: str, config: CompareConfig, base_params: int | None,
              should_stop=lambda: False) -> dict:
    loaded = session.get(role)
    label = state_label(role, loaded.history)
    key = ("compare", model_key(loaded), config.general_source, config.domain_source,
           config.eval_tokens, config.block, config.prompt, config.gen_tokens)
    row = session.cache.get(key)
    if row is None:
        row = _measure(session, loaded, config, base_params, should_stop)
        if should_stop():  # a perplexity cut short is not a measurement to keep
            return {**row, "role": label, **_task_columns(session, loaded)}
        session.cache[key] = row
    row = {**row, "role": label}
    _remember(session, {"state": lineage(loaded)[-1], "fingerprint": model_key(loaded),
                        "steps": len(loaded.history), "role": role, "label": label,
                        "settings": _settings_key(config), "task_scores": task_scores(session, loaded),
                        "row": row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return {**row, **_task_columns(session, loaded)}


def _measure(session, loaded, config: CompareConfig, base_params: int | None, should_stop) -> dict:
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    params = parameter_count(model)
    row = {"params": params,
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
    return row


def _task_columns(session, loaded) -> dict:
    return {f"task:{name}": score for name, score in task_scores(session, loaded).items()}


def earlier_rows(session, roles: list[str], config: CompareConfig) -> list[dict]:
    """Remembered rows of the earlier states of the given models (measured with these settings),
    oldest state first; states still in memory are left out (they get their own row)."""
    current = {lineage(session.get(r))[-1] for r in roles}
    ancestors = {state for r in roles for state in lineage(session.get(r))[:-1]} - current
    settings = _settings_key(config)
    found = {}
    for entry in load_rows(session):
        if entry.get("settings") == settings and entry.get("state") in ancestors:
            found[entry["state"]] = entry  # the latest measurement of a state wins
    rows = []
    for entry in sorted(found.values(), key=lambda e: (e.get("steps", 0), e.get("time", ""))):
        scores = {**(entry.get("task_scores") or {}),
                  **session.cache.get("lm_eval", {}).get(entry.get("fingerprint"), {})}
        tasks = {f"task:{k}": v for k, v in scores.items()}
        rows.append({**entry["row"], "role": entry["label"], **tasks})
    return rows


def compare_models(session, config: CompareConfig = CompareConfig(),
                   progress: Progress = null_progress, should_stop=lambda: False) -> pd.DataFrame:
    """One row per model in the session (cached per model fingerprint and settings), plus the
    remembered rows of their earlier states: base, student (pruned), student (pruned → distilled)..."""
    roles = session_roles(session, config.roles)
    base_params = parameter_count(session.get("base").model) if session.has("base") else None
    rows = []
    for i, role in enumerate(roles):
        if should_stop():
            break
        progress(i / max(len(roles), 1), f"Evaluating {role} ({i + 1}/{len(roles)})")
        rows.append(model_row(session, role, config, base_params, should_stop))
    progress(1.0, f"Compared {len(rows)} models")
    earlier = earlier_rows(session, roles, config)
    if earlier:  # after the base (which is never an earlier state), before the current models
        head = [r for r in rows if r["role"] == "base"]
        rows = [*head, *earlier, *(r for r in rows if r["role"] != "base")]
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
