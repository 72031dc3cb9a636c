"""One distillation run on disk: data blocks, held-out perplexity, Trainer, metric log, summary.

Used by the session job (studio.distill) and the CLI (studio.cli.distill); works single-process
or under torchrun/accelerate (only rank 0 writes the metric log and the summary).
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import math
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainingArguments

from studio.data import load_documents
from studio.distill_trainer import BlockDataset, DistillTrainer
from studio.errors import DataSourceError, TrainingError
from studio.evaluation import perplexity
from studio.monitor import JobCallback, MetricLog, NullLog, ddp_backend, read_metrics
from studio.progress import Progress, null_progress, scaled
from studio.teacher_text import teacher_written

log = logging.getLogger(__name__)

METRICS_FILE, CONFIG_FILE, SUMMARY_FILE = "metrics.jsonl", "config.json", "summary.json"


class ProgressOnly:
    """Job-shaped adapter for runs without a studio Job (CLI): progress only, never stops."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def progress(self, fraction: float, message: str = "") -> None:
        self._progress(fraction, message)

    def should_stop(self) -> bool:
        return False


def pack_blocks(tokenizer, spec: str, block_len: int, max_tokens: int) -> torch.Tensor:
    """Up to max_tokens of the source packed into [n, block_len] blocks (fewer if the source is
    short; the Trainer then cycles over them)."""
    docs, sep = load_documents(spec)
    ids: list[int] = []
    for start in range(0, len(docs), 64):
        for enc in tokenizer([d + sep for d in docs[start:start + 64]], add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
        if len(ids) >= max_tokens:
            break
    n = min(len(ids), max_tokens) // block_len
    if n == 0:
        raise DataSourceError(f"{spec} has only {len(ids)} tokens, less than one block of "
                              f"{block_len}; use a larger source or a shorter block.")
    return torch.tensor(ids[:n * block_len], dtype=torch.long).view(n, block_len)


def check_pair(teacher, student) -> None:
    """Refuse pairs that cannot be distilled, before anything is loaded onto the device."""
    tv, sv = teacher.config.vocab_size, student.config.vocab_size
    if tv != sv:
        raise TrainingError(f"Student vocabulary ({sv} tokens) differs from the teacher's ({tv}); "
                            "distil a student made from this teacher (same tokenizer).")


def split_data(tokenizer, cfg, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train blocks, held-out blocks): the held-out slice comes from cfg.eval_source, or from the
    tail of the training source when no eval source is given."""
    need = cfg.steps * cfg.batch * cfg.grad_accum * world_size * cfg.block
    eval_blocks = max(1, cfg.eval_tokens // cfg.block)
    if cfg.eval_source:
        train = pack_blocks(tokenizer, cfg.data, cfg.block, need)
        held = pack_blocks(tokenizer, cfg.eval_source, cfg.block, eval_blocks * cfg.block)
        return train, held
    blocks = pack_blocks(tokenizer, cfg.data, cfg.block, need + eval_blocks * cfg.block)
    if blocks.shape[0] < 2:
        raise DataSourceError(f"{cfg.data} gives a single block of {cfg.block}: nothing left to hold "
                              "out; give an eval source or a shorter block.")
    held_n = min(eval_blocks, max(1, blocks.shape[0] // 10))
    return blocks[:-held_n], blocks[-held_n:]


def _ppl(model, blocks) -> float:
    was_training = model.training
    model.eval()
    try:
        return round(perplexity(model, blocks), 4)
    finally:
        model.train(was_training)


def training_arguments(cfg, out_dir: Path, device: torch.device, student_dtype) -> TrainingArguments:
    cuda = device.type == "cuda"
    bf16 = cuda and student_dtype == torch.float32 and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=str(out_dir), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, weight_decay=0.0,
        lr_scheduler_type=cfg.schedule, warmup_steps=cfg.warmup, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.log_every, save_strategy="steps", save_steps=cfg.save_every,
        save_total_limit=2, report_to="none", disable_tqdm=True, seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=not cuda, bf16=bf16, dataloader_num_workers=0, remove_unused_columns=False,
        ddp_backend=ddp_backend(cuda), ddp_find_unused_parameters=False,
        logging_first_step=True, save_only_model=False)


def correct_teacher(teacher_model, train_blocks, cfg, out_dir: Path, device) -> torch.nn.Module:
    """Teacher correction (Minitron): a short CE fine-tune of a copy of the teacher on the data."""
    corrected = copy.deepcopy(teacher_model)
    corrected.requires_grad_(True)
    args = training_arguments(cfg, out_dir / "teacher-correction", device, next(corrected.parameters()).dtype)
    args.max_steps, args.save_strategy, args.logging_steps = cfg.teacher_correction_steps, "no", 10 ** 9
    trainer = DistillTrainer(model=corrected, args=args, train_dataset=BlockDataset(train_blocks))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    corrected.eval().requires_grad_(False)
    return corrected


def set_trainable(student, which: str) -> None:
    """Unfreeze all parameters, or only the GLU projections ("mlp"). Always sets every flag:
    a student copied from the base inherits the teacher's frozen flags of an earlier run."""
    student.model.requires_grad_(which == "all")
    if which == "mlp":
        for layer in student.adapter.layers(student.model):
            for linear in student.adapter.glu(layer):
                linear.requires_grad_(True)


def run(teacher, student, cfg, out_dir: Path, job=None, progress: Progress = null_progress,
        resume: bool = False, callbacks=()) -> dict:
    """Distil teacher -> student (student.model trained in place); returns the summary dict."""
    check_pair(teacher, student)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = _last_checkpoint(out_dir) if resume else None
    if resume and last is None:
        raise TrainingError(f"No checkpoint to resume from in {out_dir}; start a new run instead.")
    student_dtype = cfg.torch_dtype(student.dtype)
    student.model.to(student_dtype)
    set_trainable(student, cfg.trainable)
    args = training_arguments(cfg, out_dir, student.device, student_dtype)
    main = args.process_index == 0
    metric_log = MetricLog(out_dir / METRICS_FILE)
    if main:
        (out_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        if not resume and metric_log.path.exists():
            metric_log.path.unlink()  # a fresh run under the same name starts a fresh log
        (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
    else:
        progress = null_progress  # one voice: rank 0 reports
    train_blocks, held = split_data(student.tokenizer, cfg, args.world_size)
    teacher_model = teacher.model.to(student.device)
    if cfg.teacher_correction_steps and not resume:
        progress(0.02, f"Teacher correction: {cfg.teacher_correction_steps} steps")
        teacher_model = correct_teacher(teacher_model, train_blocks, cfg, out_dir, student.device)
    with args.main_process_first(desc="teacher-written blocks"):  # rank 0 writes, the others read
        train_blocks = teacher_written(teacher_model, train_blocks, cfg, out_dir,
                                       scaled(progress, 0.0, 0.01),
                                       job.should_stop if job is not None else lambda: False)
    baseline = _baseline(metric_log, teacher_model, student.model, held, main, progress)
    job = job or ProgressOnly(progress)

    def evaluate(step: int) -> dict:
        return {"ppl_student": _ppl(student.model, held), **baseline}

    tokens_per_step = cfg.batch * cfg.block * cfg.grad_accum * args.world_size
    monitor = JobCallback(job, metric_log if main else NullLog(), tokens_per_step,
                          evaluate if main and cfg.eval_every else None, cfg.eval_every,
                          label="Distillation")
    trainer = DistillTrainer(model=student.model, args=args, train_dataset=BlockDataset(train_blocks),
                             teacher=teacher_model, callbacks=[monitor, *callbacks],
                             loss_settings=cfg.loss_settings())
    trainer.remove_callback(PrinterCallback)  # stdout belongs to the CLI's JSON
    started = time.time()
    try:
        output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    except torch.OutOfMemoryError:
        trainer = None  # drop its references before emptying the cache
        gc.collect()
        torch.cuda.empty_cache()
        raise TrainingError(f"Out of GPU memory with batch {cfg.batch} × block {cfg.block}; lower "
                            "the batch or the block length (raise gradient accumulation to keep "
                            "the tokens per step).") from None
    student.model.eval()
    step = trainer.state.global_step
    summary = {"steps": step, "max_steps": cfg.steps, "stopped": monitor.stopped,
               "train_loss": round(output.training_loss, 6), "seconds": round(time.time() - started, 1),
               "tokens": step * tokens_per_step, "out": str(out_dir),
               "checkpoint": str(_last_checkpoint(out_dir) or ""), "world_size": args.world_size}
    if main:
        after = _ppl(student.model, held)
        metric_log.append({"step": step, "ppl_student": after, **baseline, "final": True})
        summary.update(baseline, ppl_after=after, gap_closed=gap_closed(
            baseline["ppl_before"], after, baseline["ppl_teacher"]))
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if teacher_model is not teacher.model:
        del teacher_model
    return summary


def _baseline(metric_log, teacher_model, student_model, held, main, progress) -> dict:
    """Teacher and pre-distillation student perplexity, measured once per run (kept on resume)."""
    if not main:
        return {}
    for row in metric_log.rows():
        if "ppl_before" in row and "ppl_teacher" in row:
            return {"ppl_teacher": row["ppl_teacher"], "ppl_before": row["ppl_before"]}
    progress(0.01, "Held-out perplexity of the teacher and the student before distillation")
    base = {"ppl_teacher": _ppl(teacher_model, held), "ppl_before": _ppl(student_model, held)}
    metric_log.append({"step": 0, "ppl_student": base["ppl_before"], **base})
    return base


def gap_closed(before: float, after: float, teacher: float) -> float | None:
    """(PPL_before − PPL_after) / (PPL_before − PPL_teacher); None when there was no gap."""
    gap = before - teacher
    if not math.isfinite(gap) or gap <= 0:
        return None
    return round((before - after) / gap, 4)


def _last_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint; one cut short by a kill (no trainer_state.json, which the
    Trainer writes last) is skipped so a resume starts from the one before it."""
    found = [p for p in Path(out_dir).glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def read_run(out_dir: Path) -> tuple[list[dict], dict | None]:
    """(metric rows, summary or None) of a run folder, for the tab and reports."""
    out_dir = Path(out_dir)
    summary = out_dir / SUMMARY_FILE
    return read_metrics(out_dir / METRICS_FILE), (json.loads(summary.read_text()) if summary.is_file() else None)
