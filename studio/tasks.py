"""Domain task scoring: PubMedQA (PQA-L) yes/no/maybe accuracy by answer log-likelihood.

The model reads the question and its contexts (rendered with its chat template), and the answer
whose continuation it finds most likely wins, as lm-eval scores multiple choice. Any tab (pruning,
distillation, LoRA, export) can call `pubmedqa_accuracy(model, tokenizer, path)`.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.nn.functional as F

from studio.data import pubmedqa_records
from studio.errors import DataSourceError
from studio.evaluation import chat_prompt
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

PUBMEDQA_CHOICES = ("yes", "no", "maybe")
PUBMEDQA_MAJORITY = 0.552  # "yes" on the official 500-PMID PQA-L test split
# The ready instruction template: question + contexts -> long answer + final decision.
PUBMEDQA_PROMPT = ("Answer the biomedical research question from the abstract's contexts, "
                   "then give a final answer of yes, no or maybe.\n\nQuestion: {QUESTION}\n\n"
                   "Contexts: {CONTEXTS}")
PUBMEDQA_RESPONSE = "{LONG_ANSWER}\nFinal answer: {final_decision}"
ANSWER_PREFIX = "Final answer:"  # the response text right before the decision


def pubmedqa_prompt(record: dict) -> str:
    contexts = record.get("CONTEXTS") or []
    return PUBMEDQA_PROMPT.format(QUESTION=record["QUESTION"],
                                  CONTEXTS=" ".join(contexts) if isinstance(contexts, list) else contexts)


def _continuation_ids(tokenizer, prefix: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of prefix and of the continuation as the tokenizer splits prefix+continuation."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prefix + continuation, add_special_tokens=False)["input_ids"]
    if full_ids[:len(prefix_ids)] == prefix_ids and len(full_ids) > len(prefix_ids):
        return prefix_ids, full_ids[len(prefix_ids):]
    return prefix_ids, tokenizer(continuation, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, prefix: str, choices, max_len: int = 1024) -> list[float]:
    """Summed log-probability of each choice continuing `prefix` (prefix cut on the left to fit)."""
    device = next(model.parameters()).device
    pairs = [_continuation_ids(tokenizer, prefix, c) for c in choices]
    prefix_ids = pairs[0][0]
    conts = [cont for _, cont in pairs]
    longest = max(len(c) for c in conts)
    prefix_ids = prefix_ids[-(max_len - longest):]
    if all(len(c) == 1 for c in conts):  # one forward pass scores every single-token choice
        logits = model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=False).logits
        logp = F.log_softmax(logits[0, -1].float(), dim=-1)
        return [logp[c[0]].item() for c in conts]
    seqs = [prefix_ids + c for c in conts]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    logp = F.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
    scores = []
    for row, cont in enumerate(conts):
        start = len(prefix_ids)
        positions = torch.arange(start - 1, start - 1 + len(cont), device=device)
        targets = torch.tensor(cont, device=device)
        scores.append(logp[row, positions, targets].sum().item())
    return scores


def pubmedqa_accuracy(model, tokenizer, path, split: str = "test", limit: int | None = None,
                      progress: Progress = null_progress, should_stop=lambda: False) -> dict:
    """Yes/no/maybe accuracy on a PQA-L split, against the majority-answer baseline."""
    records = pubmedqa_records(path, split)
    if limit:
        records = records[:limit]
    if not records:
        raise DataSourceError(f"PubMedQA split '{split}' of {path} has no records; check the file.")
    was_training = model.training
    model.eval()
    correct, predicted = 0, Counter()
    try:
        for i, record in enumerate(records):
            if should_stop():
                break
            prefix = chat_prompt(tokenizer, pubmedqa_prompt(record)) + ANSWER_PREFIX
            scores = choice_loglikelihoods(model, tokenizer, prefix, [" " + c for c in PUBMEDQA_CHOICES])
            answer = PUBMEDQA_CHOICES[max(range(len(scores)), key=scores.__getitem__)]
            predicted[answer] += 1
            correct += answer == record["final_decision"]
            progress((i + 1) / len(records), f"PubMedQA: {i + 1}/{len(records)} questions")
    finally:
        model.train(was_training)
    n = sum(predicted.values())
    truth = Counter(r["final_decision"] for r in records[:n])
    majority = truth.most_common(1)[0][1] / max(n, 1) if n else 0.0
    accuracy = correct / max(n, 1)
    return {"task": "pubmedqa", "split": split, "n": n, "accuracy": round(accuracy, 4),
            "majority_baseline": round(majority, 4), "official_majority": PUBMEDQA_MAJORITY,
            "beats_majority": accuracy > majority, "predicted": dict(predicted)}
