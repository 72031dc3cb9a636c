"""Perplexity, size, speed and generation: the numbers every tab compares."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.progress import Progress, null_progress


def batched(blocks: torch.Tensor, batch_size: int):
    for start in range(0, blocks.shape[0], batch_size):
        yield start, blocks[start:start + batch_size]


def default_batch_size(model: torch.nn.Module) -> int:
    return 8 if next(model.parameters()).device.type == "cuda" else 2


NLL_CHUNK = 64  # positions per log-softmax: a [64, vocab] block stays in cache


def summed_nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Summed next-token NLL of [B, L, vocab] logits for [B, L] ids. Chunked per window row:
    one log-softmax over [L, vocab] writes (and page-faults) a copy as large as the logits,
    which on CPU costs more than 2x the chunked form."""
    parts = []
    for row, targets in zip(logits, ids[:, 1:].to(logits.device)):
        for start in range(0, targets.shape[0], NLL_CHUNK):
            chunk = row[start:start + NLL_CHUNK].float()
            parts.append(F.cross_entropy(chunk[:targets.shape[0] - start],
                                         targets[start:start + NLL_CHUNK], reduction="sum"))
    return torch.stack(parts).double().sum().item()  # one device sync per batch


@torch.no_grad()
def token_nll(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int | None = None,
              progress: Progress = null_progress, should_stop=lambda: False) -> tuple[float, int]:
    """(summed next-token NLL, number of predicted tokens) over non-overlapping windows."""
    device = next(model.parameters()).device
    batch_size = batch_size or default_batch_size(model)
    total, count = 0.0, 0
    for start, batch in batched(blocks, batch_size):
        if should_stop():
            break
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        total += summed_nll(logits, batch)
        count += batch[:, 1:].numel()
        done = start + batch.shape[0]
        progress(done / blocks.shape[0], f"Perplexity: {done}/{blocks.shape[0]} windows")
    return total, count


def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int | None = None,
               progress: Progress = null_progress, should_stop=lambda: False) -> float:
    """exp(mean NLL) over every predicted token of the [n, L] windows; deterministic."""
    total, count = token_nll(model, blocks, batch_size, progress, should_stop)
    return math.exp(total / max(count, 1))


def parameter_count(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def model_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


@torch.no_grad()
def forward_tokens_per_second(model: torch.nn.Module, blocks: torch.Tensor, repeats: int = 1,
                              batch_size: int | None = None) -> float:
    """Forward-pass throughput over the blocks (one warm-up batch first)."""
    device = next(model.parameters()).device
    batch_size = batch_size or default_batch_size(model)
    model(input_ids=blocks[:1].to(device), use_cache=False)
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        for _, batch in batched(blocks, batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    _sync(device)
    return repeats * blocks.numel() / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chat_prompt(tokenizer, prompt: str, use_chat_template: bool = True) -> str:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 64, use_chat_template: bool = True,
             do_sample: bool = False, temperature: float = 0.7, seed: int = 0) -> dict:
    """Greedy (default) or sampled generation; returns the text and its timings."""
    device = next(model.parameters()).device
    text = chat_prompt(tokenizer, prompt, use_chat_template)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    torch.manual_seed(seed)
    started = time.perf_counter()
    first = model(**inputs, use_cache=False)  # time to first token ≈ one prefill
    ttft = time.perf_counter() - started
    del first
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=0.95)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    started = time.perf_counter()
    out = model.generate(**inputs, **kwargs)
    seconds = time.perf_counter() - started
    new = out[0, inputs["input_ids"].shape[1]:]
    return {"text": tokenizer.decode(new, skip_special_tokens=True).strip(),
            "new_tokens": int(new.numel()), "seconds": round(seconds, 3),
            "tokens_per_s": round(new.numel() / max(seconds, 1e-9), 2),
            "time_to_first_token_s": round(ttft, 4)}
