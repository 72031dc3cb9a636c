"""Self-data distillation (Thangarasa et al., 2024): the teacher rewrites part of the training data.

Each chosen block keeps its first `prompt_tokens` tokens and the teacher samples the rest at
`sample_temperature` (plain sampling: no top-k/top-p, so the text follows the teacher's own
distribution). The student then learns the teacher on text the teacher itself finds likely, which
spreads the training inputs beyond the source's own style and formatting.

The written blocks are stored in the run folder, so a resumed run and the other ranks of a
torchrun job train on the very same tokens instead of sampling again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig

from studio.jobs import JobStopped
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

FILE = "teacher-blocks.safetensors"
GENERATE_TOKENS = 16384  # tokens sampled together (64 blocks of 256): bounds the KV cache


def teacher_written(teacher_model, blocks: torch.Tensor, cfg, out_dir: Path,
                    progress: Progress = null_progress, should_stop=lambda: False) -> torch.Tensor:
    """`blocks` [n, L] with the first round(n · cfg.teacher_data) rewritten by the teacher (the
    Trainer shuffles, so which blocks are rewritten does not matter)."""
    count = round(len(blocks) * cfg.teacher_data)
    if count == 0:
        return blocks
    prompts = blocks[:count, :cfg.prompt_tokens]
    path = Path(out_dir) / FILE
    written = _stored(path, prompts, blocks.shape[1])
    if written is None:
        written = sample_continuations(teacher_model, prompts, blocks.shape[1], cfg.sample_temperature,
                                       cfg.seed, progress, should_stop)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"blocks": written.contiguous()}, str(path))
    return torch.cat([written, blocks[count:]])


def _stored(path: Path, prompts: torch.Tensor, length: int) -> torch.Tensor | None:
    """The blocks written earlier for these very prompts (resume, other ranks), else None."""
    if not path.is_file():
        return None
    try:
        written = load_file(str(path))["blocks"]
    except Exception as err:  # a file cut short by a kill: sample again
        log.warning("unreadable %s (%s): sampling the teacher's text again", path, err)
        return None
    same = written.shape == (prompts.shape[0], length) and torch.equal(written[:, :prompts.shape[1]], prompts)
    return written if same else None


def sample_continuations(model, prompts: torch.Tensor, length: int, temperature: float, seed: int,
                         progress: Progress = null_progress, should_stop=lambda: False) -> torch.Tensor:
    """[n, length] token ids: each prompt followed by the model's sampled continuation. The global
    RNG is left as it was (the Trainer seeds its own)."""
    device = next(model.parameters()).device
    new_tokens = length - prompts.shape[1]
    settings = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                eos_token_id=_eos(model), pad_token_id=_eos(model))
    was_training = model.training
    model.eval()
    batch = max(1, GENERATE_TOKENS // length)
    out = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch):
                if should_stop():
                    raise JobStopped()
                progress(start / len(prompts), f"Teacher writes training text: {start}/{len(prompts)} blocks")
                chunk = prompts[start:start + batch].to(device)
                ids = model.generate(input_ids=chunk, attention_mask=torch.ones_like(chunk),
                                     generation_config=settings)
                out.append(ids[:, :length].cpu())
    finally:
        model.train(was_training)
    progress(1.0, f"Teacher wrote {len(prompts)} blocks")
    return torch.cat(out)


def _eos(model) -> int | None:
    """One end-of-text id: min_new_tokens keeps it from ending a block early."""
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = model.config.eos_token_id if eos is None else eos
    return eos[0] if isinstance(eos, (list, tuple)) else eos
