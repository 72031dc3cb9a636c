"""The transformers Trainer that distils: a frozen teacher beside the student, the studio loss.

The Trainer brings gradient accumulation, the cosine schedule, mixed precision, checkpoints,
resume and data parallelism (torchrun / accelerate); this subclass only changes the loss and
reports the loss components in the logs (checkpoints: safetensors + JSON, see studio.checkpoints).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from transformers import Trainer

from studio.checkpoints import SafeCheckpointMixin
from studio.distill_loss import distillation_loss

log = logging.getLogger(__name__)


class BlockDataset(torch.utils.data.Dataset):
    """Packed [n, L] token blocks as causal-LM examples (no padding: every token is real)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


class DistillTrainer(SafeCheckpointMixin, Trainer):
    """compute_loss = α·CE + β·T²·KL + γ·(1 − cos); `teacher=None` trains on CE alone (used for
    teacher correction). The teacher never gets gradients and runs in bf16 autocast on CUDA."""

    def __init__(self, *args, teacher=None, loss_settings: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.loss_settings = dict(loss_settings or {})
        self.loss_is_scaled_for_ga = False  # our loss is a per-batch mean; the Trainer divides by GA
        self._sums: dict[str, float] = {}
        self._count = 0
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def _teacher_context(self):
        device = next(self.teacher.parameters()).device
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        settings = self.loss_settings
        want_hidden = bool(settings.get("gamma")) and self.teacher is not None
        input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        outputs = model(input_ids=input_ids, attention_mask=mask, use_cache=False,
                        output_hidden_states=want_hidden)
        teacher_out = None
        if self.teacher is not None and (settings.get("beta") or want_hidden):
            with torch.no_grad(), self._teacher_context():
                teacher_out = self.teacher(input_ids=input_ids, attention_mask=mask, use_cache=False,
                                           output_hidden_states=want_hidden)
        if self.teacher is None:
            settings = {**settings, "alpha": 1.0, "beta": 0.0, "gamma": 0.0}
        terms = distillation_loss(
            outputs.logits, None if teacher_out is None else teacher_out.logits, input_ids, mask,
            inputs.get("labels"), alpha=settings.get("alpha", 0.6), beta=settings.get("beta", 0.4),
            gamma=settings.get("gamma", 0.0), temperature=settings.get("temperature", 2.0),
            kl=settings.get("kl", "forward"), skew=settings.get("skew", 0.1),
            student_hidden=outputs.hidden_states if want_hidden else None,
            teacher_hidden=teacher_out.hidden_states if want_hidden and teacher_out else None,
            layer_map=settings.get("layer_map", "uniform"))
        if model.training:
            for key in ("ce", "kl", "cos"):
                self._sums[key] = self._sums.get(key, 0.0) + terms[key]
            self._count += 1
        return (terms["loss"], outputs) if return_outputs else terms["loss"]

    def log(self, logs: dict, start_time=None) -> None:
        """Add the mean of each loss component since the last log to the Trainer's own row."""
        if "loss" in logs and self._count:
            for key, total in self._sums.items():
                logs[f"loss_{key}"] = round(float(total) / self._count, 6)
            self._sums, self._count = {}, 0
        super().log(logs, start_time)
