"""The distillation loss: α·CE + β·T²·KL(teacher‖student at T) + γ·(1 − cos) on mapped hidden states.

Pure tensor functions (no Trainer) so a test can check them against a hand computation. Every
term is averaged over real tokens only: padding (attention_mask 0) and ignored labels (-100) are
masked out of the CE, the KL and the cosine alike.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from studio.errors import TrainingError

KL_KINDS = ("forward", "reverse", "skew")
LAYER_MAPS = ("uniform", "last")


def layer_pairs(student_layers: int, teacher_layers: int, mapping: str = "uniform") -> list[tuple[int, int]]:
    """(student, teacher) indices into `hidden_states` (0 = embeddings, i = output of layer i).

    uniform: student layer i ↔ teacher layer round(i·Lt/Ls) (depth-pruned students keep a spread
    of targets); last: only the final hidden states are matched."""
    if mapping not in LAYER_MAPS:
        raise TrainingError(f"Unknown layer mapping '{mapping}'; use one of {', '.join(LAYER_MAPS)}.")
    if mapping == "last":
        return [(student_layers, teacher_layers)]
    return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 kind: str = "forward", skew: float = 0.1) -> torch.Tensor:
    """[..., V] logits -> [...] divergence at temperature T.

    forward: KL(p_t ‖ p_s) (mean-seeking); reverse: KL(p_s ‖ p_t) (mode-seeking); skew:
    KL(p_t ‖ λ·p_t + (1−λ)·p_s) with mixing weight λ = `skew` (bounded, stable early on)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward":
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if kind == "reverse":
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    if kind == "skew":
        if not 0.0 <= skew < 1.0:
            raise TrainingError(f"Skew mixing weight {skew} must be in [0, 1); 0.1 is a good start.")
        log_mix = torch.logaddexp(log_t + math.log(skew), log_s + math.log(1.0 - skew)) \
            if skew > 0 else log_s
        return (log_t.exp() * (log_t - log_mix)).sum(-1)
    raise TrainingError(f"Unknown KL kind '{kind}'; use one of {', '.join(KL_KINDS)}.")


def token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               labels: torch.Tensor | None) -> torch.Tensor:
    """[B, T-1] bool: positions whose next token is real (predicted by CE and KL)."""
    mask = torch.ones_like(input_ids[:, 1:], dtype=torch.bool)
    if attention_mask is not None:
        mask &= attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    if labels is not None:
        mask &= labels[:, 1:] != -100
    return mask


def distillation_loss(student_logits, teacher_logits, input_ids, attention_mask=None, labels=None, *,
                      alpha=0.6, beta=0.4, gamma=0.0, temperature=2.0, kl="forward", skew=0.1,
                      student_hidden=None, teacher_hidden=None, layer_map="uniform") -> dict:
    """Terms of the loss for one batch; 'loss' is the weighted total (the others are detached)."""
    if teacher_logits is not None and student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise TrainingError(f"Student vocabulary ({student_logits.shape[-1]}) differs from the "
                            f"teacher's ({teacher_logits.shape[-1]}); distil between models that "
                            "share a tokenizer.")
    labels = input_ids if labels is None else labels
    mask = token_mask(input_ids, attention_mask, labels)
    count = mask.sum().clamp(min=1)
    s_logits = student_logits[:, :-1]
    ce_tok = F.cross_entropy(s_logits.float().reshape(-1, s_logits.shape[-1]),
                             labels[:, 1:].reshape(-1).clamp(min=0), reduction="none").view_as(mask)
    ce = (ce_tok * mask).sum() / count
    zero = ce.new_zeros(())
    kl_value = zero
    if beta and teacher_logits is not None:
        kl_tok = kl_per_token(s_logits, teacher_logits[:, :-1], temperature, kl, skew)
        kl_value = (kl_tok * mask).sum() / count
    cos_value = zero
    if gamma and student_hidden is not None and teacher_hidden is not None:
        cos_value = hidden_cosine_loss(student_hidden, teacher_hidden, attention_mask, layer_map)
    total = alpha * ce + beta * temperature ** 2 * kl_value + gamma * cos_value
    return {"loss": total, "ce": ce.detach(), "kl": kl_value.detach(), "cos": cos_value.detach()}


def hidden_cosine_loss(student_hidden, teacher_hidden, attention_mask=None, layer_map="uniform"):
    """Mean over mapped layer pairs and real tokens of 1 − cos(h_student, h_teacher)."""
    s_layers, t_layers = len(student_hidden) - 1, len(teacher_hidden) - 1
    if student_hidden[-1].shape[-1] != teacher_hidden[-1].shape[-1]:
        raise TrainingError(f"Hidden sizes differ (student {student_hidden[-1].shape[-1]}, teacher "
                            f"{teacher_hidden[-1].shape[-1]}); set γ (hidden-state weight) to 0.")
    if attention_mask is None:
        mask = torch.ones(student_hidden[-1].shape[:2], dtype=torch.bool,
                          device=student_hidden[-1].device)
    else:
        mask = attention_mask.bool()
    count = mask.sum().clamp(min=1)
    losses = []
    for s, t in layer_pairs(s_layers, t_layers, layer_map):
        cos = F.cosine_similarity(student_hidden[s].float(), teacher_hidden[t].float(), dim=-1)
        losses.append(((1 - cos) * mask).sum() / count)
    return torch.stack(losses).mean()
