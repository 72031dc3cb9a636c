"""Distillation in the session: the teacher (session "base") teaches the student (session "student",
trained in place) as a background job with a metric log, stop, resume and a result summary.

Loss terms: studio.distill_loss; the Trainer: studio.distill_trainer; one run on disk:
studio.distill_run.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields

import torch
from transformers import TrainerCallback

from studio.distill_loss import KL_KINDS, LAYER_MAPS
from studio.distill_run import CONFIG_FILE, read_run, run
from studio.errors import TrainingError
from studio.jobs import Job, JobStopped
from studio.progress import Progress, null_progress
from studio.session import BASE, STUDENT, Session

log = logging.getLogger(__name__)

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SCHEDULES = ("cosine", "linear", "constant_with_warmup")
TRAINABLE = ("all", "mlp")  # mlp: only the GLU projections learn (what width pruning cut)


@dataclass
class DistillConfig:
    data: str = "builtin:python-docs"  # any studio.data source spec
    eval_source: str | None = None     # held-out text; None = the tail of `data`
    steps: int = 100
    batch: int = 2
    block: int = 256
    grad_accum: int = 1
    lr: float = 1e-4
    alpha: float = 0.6                 # CE weight
    beta: float = 0.4                  # KL weight (multiplied by T²)
    gamma: float = 0.0                 # hidden-state cosine weight
    temperature: float = 2.0
    kl: str = "forward"                # KL_KINDS
    skew: float = 0.1                  # mixing weight of the skew KL
    layer_map: str = "uniform"         # LAYER_MAPS (depth-pruned students)
    schedule: str = "cosine"
    warmup: float = 0.05               # fraction of steps (or a whole number of steps)
    max_grad_norm: float = 1.0
    eval_tokens: int = 2048
    eval_every: int = 25               # held-out perplexity every K steps (0 = only at the end)
    save_every: int = 50               # checkpoint interval (steps): the most a kill -9 loses
    log_every: int = 1
    student_dtype: str = "auto"        # DTYPES key; auto keeps the student's dtype
    teacher_correction_steps: int = 0  # > 0: fine-tune a copy of the teacher first (Minitron)
    trainable: str = "all"             # TRAINABLE
    teacher_data: float = 0.0          # share of training blocks the teacher rewrites (self-data)
    prompt_tokens: int = 4             # tokens of each rewritten block kept as the teacher's prompt (4 beat 32)
    sample_temperature: float = 1.0    # the teacher's sampling temperature when it rewrites
    seed: int = 0
    run_name: str = ""

    def validate(self) -> None:
        checks = [(self.steps > 0, f"steps must be positive (got {self.steps})"),
                  (self.batch > 0 and self.block > 1 and self.grad_accum > 0,
                   f"batch, block and accumulation must be positive (got {self.batch}, {self.block}, "
                   f"{self.grad_accum})"),
                  (self.lr > 0, f"learning rate must be positive (got {self.lr})"),
                  (min(self.alpha, self.beta, self.gamma) >= 0 and self.alpha + self.beta + self.gamma > 0,
                   f"α, β, γ must be ≥ 0 and not all 0 (got {self.alpha}, {self.beta}, {self.gamma})"),
                  (self.temperature > 0, f"temperature must be positive (got {self.temperature})"),
                  (self.kl in KL_KINDS, f"KL kind '{self.kl}' is not one of {', '.join(KL_KINDS)}"),
                  (0 <= self.skew < 1, f"skew weight must be in [0, 1) (got {self.skew})"),
                  (self.layer_map in LAYER_MAPS, f"layer map '{self.layer_map}' is not one of "
                                                 f"{', '.join(LAYER_MAPS)}"),
                  (self.schedule in SCHEDULES, f"schedule '{self.schedule}' is not one of {', '.join(SCHEDULES)}"),
                  (self.trainable in TRAINABLE, f"trainable '{self.trainable}' is not one of "
                                                 f"{', '.join(TRAINABLE)}"),
                  (self.student_dtype in DTYPES, f"student dtype '{self.student_dtype}' is not one of "
                                                 f"{', '.join(DTYPES)}"),
                  (0 <= self.teacher_data <= 1, f"teacher-written share must be in [0, 1] (got "
                                                f"{self.teacher_data})"),
                  (not self.teacher_data or 1 <= self.prompt_tokens < self.block,
                   f"prompt tokens must be in [1, block) (got {self.prompt_tokens} with block "
                   f"{self.block})"),
                  (self.sample_temperature > 0, f"sampling temperature must be positive (got "
                                                f"{self.sample_temperature})"),
                  (self.save_every > 0 and self.eval_every >= 0 and self.log_every > 0,
                   "save/eval/log intervals must be positive (eval may be 0)"),
                  (self.eval_tokens >= self.block, f"eval tokens ({self.eval_tokens}) must cover at "
                                                   f"least one block of {self.block}")]
        for ok, message in checks:
            if not ok:
                raise TrainingError(f"Distillation settings: {message}; fix it and start again.")

    def torch_dtype(self, current: torch.dtype) -> torch.dtype:
        return DTYPES[self.student_dtype] or current

    def loss_settings(self) -> dict:
        return {k: getattr(self, k) for k in ("alpha", "beta", "gamma", "temperature", "kl", "skew",
                                              "layer_map")}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: dict) -> "DistillConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(settings) - names - {"step", "time", "resume", "completed_steps"}
        if unknown:
            raise TrainingError(f"Unknown distillation settings {sorted(unknown)}; "
                                f"known ones are {sorted(names)}.")
        return cls(**{k: v for k, v in settings.items() if k in names})


def run_folder(session: Session, run_name: str):
    return session.path("distill", run_name)


def latest_run(session: Session) -> str | None:
    """Name of the most recently changed run folder (the tab re-attaches to it after a reload)."""
    root = session.workspace / "distill"
    runs = [p for p in root.glob("*") if p.is_dir()] if root.is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime).name if runs else None


class _StopAfter(TrainerCallback):
    """Ends training after `steps` optimizer steps of a schedule planned for more: the replay of
    a run the user stopped early (same schedule, same point)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True


def distill(session: Session, config: DistillConfig, job: Job | None = None,
            progress: Progress = null_progress, resume: bool = False,
            stop_after: int | None = None, callbacks=()) -> dict:
    """Distil session 'base' into session 'student' (a copy of the base when there is none yet);
    `stop_after` ends it after that many steps of the configured schedule; `callbacks` are
    extra TrainerCallbacks."""
    config.validate()
    if not config.run_name:
        config.run_name = time.strftime("run-%Y%m%d-%H%M%S")
    out_dir = run_folder(session, config.run_name)
    teacher = session.get(BASE)
    if resume and not session.has(STUDENT):
        raise TrainingError("Resuming needs the student the run started from; load it (or prune "
                            "again with the same settings) before resuming.")
    if not session.has(STUDENT):
        log.info("no student in the session: distilling a copy of the base")
        session.set_model(STUDENT, session.copy_of(BASE))
    student = session.get(STUDENT)
    callbacks = [*callbacks, *([_StopAfter(stop_after)] if stop_after is not None else [])]
    summary = run(teacher, student, config, out_dir, job=job, progress=progress, resume=resume,
                  callbacks=callbacks)
    student.history.append({"step": "distill", "run": config.run_name, "steps": summary["steps"],
                            "resume": resume})
    with session.lock:  # a resumed run replaces the record of its interrupted part
        session.recipe[:] = [s for s in session.recipe
                             if not (s.get("step") == "distill" and s.get("run_name") == config.run_name)]
    session.record({"step": "distill", **config.to_dict(), "completed_steps": summary["steps"]})
    if summary["stopped"] and job is not None:
        job.log(f"stopped at step {summary['steps']}; checkpoint {summary['checkpoint']}")
        raise JobStopped()
    return summary


def start_distillation(session: Session, config: DistillConfig, resume: bool = False) -> Job:
    """Validate, then run `distill` as a heavy session job; returns the job at once."""
    config.validate()
    session.get(BASE)
    if resume:
        config = resume_config(session, config.run_name)
    elif not config.run_name:
        config.run_name = time.strftime("run-%Y%m%d-%H%M%S")
    return session.submit(f"distill {config.run_name}",
                          lambda job: distill(session, config, job=job, progress=job.progress,
                                              resume=resume))


def resume_config(session: Session, run_name: str | None) -> DistillConfig:
    """The settings a run started with (resume must continue the same schedule)."""
    run_name = run_name or latest_run(session)
    path = run_folder(session, run_name) / CONFIG_FILE if run_name else None
    if path is None or not path.is_file():
        raise TrainingError(f"No distillation run '{run_name or ''}' to resume in "
                            f"{session.workspace / 'distill'}; start a new run.")
    return DistillConfig.from_dict(json.loads(path.read_text()))


def run_state(session: Session, run_name: str | None = None) -> dict:
    """What the tab shows for a run: name, metric rows and summary (read from disk)."""
    run_name = run_name or latest_run(session)
    if not run_name:
        return {"run": None, "rows": [], "summary": None}
    rows, summary = read_run(run_folder(session, run_name))
    return {"run": run_name, "rows": rows, "summary": summary}


def replay_step(session: Session, settings: dict, progress: Progress = null_progress,
                run_name: str | None = None) -> dict:
    """Recipe replay: run the recorded distillation again (a fresh run under a new name; under
    torchrun the recipe passes every rank the same `run_name`), stopping where the recorded run
    stopped when the user ended it early."""
    config = DistillConfig.from_dict(settings)
    config.run_name = run_name or f"{config.run_name or 'run'}-replay-{time.strftime('%H%M%S')}"
    completed = settings.get("completed_steps")
    stop_after = completed if completed is not None and completed < config.steps else None
    return distill(session, config, progress=progress, stop_after=stop_after)
