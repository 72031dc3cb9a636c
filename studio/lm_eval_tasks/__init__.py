"""lm-eval on the in-memory model (`HFLM(pretrained=model)`, no checkpoint round-trip).

Local tasks (YAMLs in this folder, data path given as a setting) run offline; hub tasks
(arc_easy, hellaswag, ...) are lm-eval's own registry and need the Hugging Face Hub.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from studio.errors import StudioError
from studio.jobs import JobStopped
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent
# local task -> the setting (metadata key) holding its data path
LOCAL_TASKS = {"pubmedqa_local": "pubmedqa_path", "local_mcq": "mcq_path"}
HUB_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "lambada_openai",
             "boolq", "openbookqa", "sciq", "mmlu")
PRIMARY_METRICS = ("acc,none", "acc_norm,none", "exact_match,none", "perplexity,none")


class LmEvalError(StudioError):
    pass


def task_choices() -> list[str]:
    return [*LOCAL_TASKS, *HUB_TASKS]


def _studio_lm(loaded, batch_size: int, progress: Progress, should_stop):
    """An HFLM over the in-memory model that reports progress and honours stop per batch."""
    from lm_eval.models.huggingface import HFLM

    class StudioLM(HFLM):
        total, done = 0, 0

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self.total, self.done = len(requests), 0
            out = super().loglikelihood(requests, disable_tqdm=True)
            progress(1.0, f"lm-eval: scored {self.total} requests")
            return out

        def _model_call(self, inps, attn_mask=None, labels=None):
            if should_stop():
                raise JobStopped()
            self.done += inps.shape[0]  # requests sharing a context share one call: a lower bound
            progress(min(self.done / max(self.total, 1), 0.99),
                     f"lm-eval: {min(self.done, self.total)}/{self.total} requests")
            return super()._model_call(inps, attn_mask, labels)

    return StudioLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                    device=str(loaded.device))


def task_manager(tasks: list[str], settings: dict):
    from lm_eval.tasks import TaskManager

    hub = [t for t in tasks if t not in LOCAL_TASKS]
    for task in tasks:
        key = LOCAL_TASKS.get(task)
        if key and not settings.get(key):
            raise LmEvalError(f"Local task '{task}' needs its data file; set '{key}' "
                              "(e.g. ../shared/data/pubmedqa/ori_pqal.json).")
        if key and not Path(settings[key]).expanduser().is_file():
            raise LmEvalError(f"Data file {settings[key]} for task '{task}' does not exist; "
                              "check the path.")
    meta = {k: str(Path(v).expanduser().resolve()) if k in LOCAL_TASKS.values() else v
            for k, v in settings.items() if v}
    return TaskManager(include_path=str(TASK_DIR), include_defaults=bool(hub), metadata=meta)


def summarize(results: dict) -> dict:
    """{task: {metric: value}} from lm-eval's results, plus 'score' (the first primary metric)."""
    out = {}
    for task, metrics in results.get("results", {}).items():
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"
                 and not (isinstance(v, float) and math.isnan(v))}
        score = next((clean[m] for m in PRIMARY_METRICS if m in clean), None)
        out[task] = {**clean, "score": score}
    return out


def run_lm_eval(loaded, tasks: list[str], limit: int | None = 20, settings: dict | None = None,
                batch_size: int = 4, num_fewshot: int | None = None, seed: int = 0,
                progress: Progress = null_progress, should_stop=lambda: False) -> dict:
    """Evaluate the in-memory model on lm-eval tasks; returns {task: {metric: value, score}}."""
    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise LmEvalError(f"No lm-eval task chosen; pick from {', '.join(task_choices())}.")
    from lm_eval import simple_evaluate

    manager = task_manager(tasks, settings or {})
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LmEvalError(f"lm-eval does not know the task(s) {unknown}; pick from "
                          f"{', '.join(task_choices())} or another name from lm-eval's registry.")
    lm = _studio_lm(loaded, batch_size, progress, should_stop)
    was_training = loaded.model.training
    try:
        results = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                  num_fewshot=num_fewshot, log_samples=False, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed, bootstrap_iters=0)
    except (JobStopped, StudioError):
        raise
    except Exception as exc:  # dataset download / hub errors surface as many untyped exceptions
        hub = [t for t in tasks if t not in LOCAL_TASKS]
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        if hub:
            raise LmEvalError(f"lm-eval could not prepare {hub} ({first}); these tasks download "
                              "their data from the Hugging Face Hub, so connect to the network or "
                              f"use a local task ({', '.join(LOCAL_TASKS)}).") from exc
        raise LmEvalError(f"lm-eval failed on {tasks} ({first}); check the task's data file.") from exc
    finally:
        loaded.model.train(was_training)
    return summarize(results or {})


def evaluate_in_session(session, role: str, tasks: list[str], limit: int | None, settings: dict,
                        progress: Progress = null_progress, should_stop=lambda: False,
                        batch_size: int = 4) -> dict:
    """run_lm_eval on a session model; scores are kept per model fingerprint for the comparison."""
    loaded = session.working() if role in ("", "working") else session.get(role)
    scores = run_lm_eval(loaded, tasks, limit, settings, batch_size, progress=progress,
                         should_stop=should_stop)
    from studio.compare import model_key

    cache = session.cache.setdefault("lm_eval", {}).setdefault(model_key(loaded), {})
    cache.update({task: m["score"] for task, m in scores.items() if m.get("score") is not None})
    return scores


def submit_lm_eval(session, role: str, tasks: list[str], limit: int | None, settings: dict):
    """lm-eval as a session job (progress, stop)."""
    return session.submit(f"lm-eval {','.join(tasks)}", lambda job: evaluate_in_session(
        session, role, tasks, limit, settings, job.progress, job.should_stop))
