"""Distil a teacher into a (pruned) student; runs alone or under torchrun / accelerate launch."""
from __future__ import annotations

import os
import sys
from dataclasses import fields
from pathlib import Path

from studio.cli._common import positive_int, process_device
from studio.distill import DTYPES, SCHEDULES, TRAINABLE, DistillConfig
from studio.distill_loss import KL_KINDS, LAYER_MAPS
from studio.distill_run import run as run_distillation
from studio.models.loading import load_model
from studio.progress import null_progress, scaled

NAME = "distill"
DEFAULTS = {f.name: f.default for f in fields(DistillConfig)}


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", default="default", help="teacher model spec (default, hub id, folder)")
    parser.add_argument("--student", required=True, help="student folder (e.g. written by `studio prune`)")
    parser.add_argument("--data", required=True, help="training text source (see studio.data)")
    parser.add_argument("--eval", default=None, help="held-out text source (default: tail of --data)")
    parser.add_argument("--out", required=True, help="folder for the metric log, checkpoints, summary")
    parser.add_argument("--steps", type=positive_int, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--device", default=None, help="cpu, cuda (under torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES), help="student training dtype")
    parser.add_argument("--teacher-dtype", default=None, help="teacher dtype (default: bf16 on CUDA)")
    parser.add_argument("--save-model", action="store_true", help="also save the final student to OUT/student")
    ints = ["batch", "block", "grad_accum", "eval_tokens", "eval_every", "save_every", "log_every",
            "teacher_correction_steps", "prompt_tokens", "seed"]
    floats = ["lr", "alpha", "beta", "gamma", "temperature", "skew", "warmup", "max_grad_norm",
              "teacher_data", "sample_temperature"]
    for name in ints:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=DEFAULTS[name])
    for name in floats:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=DEFAULTS[name])
    parser.add_argument("--kl", default="forward", choices=KL_KINDS)
    parser.add_argument("--layer-map", default="uniform", choices=LAYER_MAPS)
    parser.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    parser.add_argument("--trainable", default="all", choices=TRAINABLE,
                        help="which parameters learn: all, or only the MLP (GLU) projections")


def config_from_args(args) -> DistillConfig:
    names = {f.name for f in fields(DistillConfig)} - {"data", "eval_source", "student_dtype", "run_name"}
    config = DistillConfig(data=args.data, eval_source=args.eval, student_dtype=args.dtype,
                           run_name=Path(args.out).name,
                           **{n: getattr(args, n) for n in names if hasattr(args, n)})
    config.validate()
    return config


def run(args, progress) -> dict:
    config = config_from_args(args)
    rank = int(os.environ.get("RANK", "0"))
    device = process_device(args.device)
    if rank != 0:
        progress = null_progress  # one voice: rank 0
    teacher = load_model(args.teacher, device=device, dtype=args.teacher_dtype,
                         progress=scaled(progress, 0.0, 0.05))
    student = load_model(args.student, device=device, progress=scaled(progress, 0.05, 0.1))
    summary = run_distillation(teacher, student, config, Path(args.out),
                               progress=scaled(progress, 0.1, 1.0), resume=args.resume)
    sys.stderr.write(f"distill: rank {rank}/{summary['world_size']} finished at step {summary['steps']}\n")
    if rank != 0:
        raise SystemExit(0)  # only rank 0 prints the JSON result
    if args.save_model:
        student.model.save_pretrained(Path(args.out) / "student")
        student.tokenizer.save_pretrained(Path(args.out) / "student")
        summary["student_folder"] = str(Path(args.out) / "student")
    return {"teacher": args.teacher, "student": args.student, "data": args.data, **summary}

