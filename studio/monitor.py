"""Training monitoring shared by distillation and LoRA: a JSONL metric log that the UI polls
(so charts survive a page reload), a Trainer callback that reports progress and honours stop, and
what both trainers need under torchrun (a silent log for ranks > 0, the CPU backend).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricLog:
    """Append-only JSONL of metric rows; readers tolerate a half-written last line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **clean}) + "\n")

    def rows(self) -> list[dict]:
        return read_metrics(self.path)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # the writer may be mid-line
    return rows


class JobCallback(TrainerCallback):
    """Mirror Trainer progress into a studio Job, log metrics, and stop (with a checkpoint) on request.

    `evaluate(step) -> dict` (optional) runs every `eval_every` steps, e.g. held-out perplexity.
    """

    def __init__(self, job, metric_log: MetricLog, tokens_per_step: int = 0, evaluate=None,
                 eval_every: int = 0, label: str = "Training"):
        self.job, self.log, self.tokens_per_step = job, metric_log, tokens_per_step
        self.evaluate, self.eval_every, self.label = evaluate, eval_every, label
        self._last_time = None
        self.stopped = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        total = max(state.max_steps, 1)
        if self.job is not None:
            self.job.progress(state.global_step / total, f"{self.label}: step {state.global_step}/{total}")
            if self.job.should_stop():
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True  # a stopped run leaves a checkpoint to resume from
        if self.evaluate and self.eval_every and state.global_step % self.eval_every == 0:
            self.log.append({"step": state.global_step, **self.evaluate(state.global_step)})
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.time()
        row = {"step": state.global_step, **(logs or {})}
        # only step logs: the Trainer's closing row (train_runtime...) comes right after the last
        # step's, and its "rate" drew a spike at the end of the chart
        if self._last_time is not None and self.tokens_per_step and args.logging_steps and "loss" in row:
            row["tokens_per_s"] = round(self.tokens_per_step * args.logging_steps
                                        / max(now - self._last_time, 1e-9), 1)
        self._last_time = now
        self.log.append(row)


class NullLog:
    """The metric log of ranks other than 0 under torchrun: they write nothing."""

    def append(self, row: dict) -> None:
        """Dropped."""

    def rows(self) -> list[dict]:
        return []


def ddp_backend(cuda: bool) -> str | None:
    """gloo for CPU processes under torchrun (named explicitly: every torch build has it); None
    (the Trainer's own choice) on CUDA or in a single process."""
    return None if cuda or int(os.environ.get("WORLD_SIZE", "1")) < 2 else "gloo"
