"""Training examples for LoRA: packed text blocks, or instruction records rendered with the
model's chat template with the loss only on the response tokens (labels -100 elsewhere)."""
from __future__ import annotations

import logging
import string
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.data import TABLE_SUFFIXES, _fields_text, _json_records, load_documents, pubmedqa_records
from studio.errors import DataSourceError
from studio.tasks import PUBMEDQA_PROMPT, PUBMEDQA_RESPONSE

log = logging.getLogger(__name__)

IGNORE = -100
# name -> (prompt template, response template) over a record's fields
PRESET_TEMPLATES = {"pubmedqa": (PUBMEDQA_PROMPT, PUBMEDQA_RESPONSE)}
FALLBACK_FORMAT = "### Instruction:\n{prompt}\n\n### Response:\n"


def load_records(spec: str) -> list[dict]:
    """Records (dicts of fields) of an instruction source: pubmedqa:PATH[:split], a table file or hf:."""
    spec = (spec or "").strip()
    if spec.startswith("pubmedqa:"):
        path, _, split = spec[len("pubmedqa:"):].partition(":")
        return pubmedqa_records(path, split or "all")
    if spec.startswith("hf:"):
        import datasets

        parts = spec[3:].partition("#")[0].split(":")
        try:
            ds = datasets.load_dataset(parts[0], (parts[1] or None) if len(parts) > 1 else None,
                                       split=parts[2] if len(parts) > 2 else "train")
        except Exception as exc:
            raise DataSourceError(f"Could not load Hugging Face dataset '{spec}' "
                                  f"({str(exc).splitlines()[0][:120]}); use a local file.") from None
        return [dict(r) for r in ds]
    path = Path(spec.partition("#")[0]).expanduser()
    if not path.is_file() or path.suffix not in TABLE_SUFFIXES:
        raise DataSourceError(f"Instruction data '{spec}' must be an existing .jsonl/.json/.csv/"
                              ".parquet file, hf:NAME or pubmedqa:PATH; use --format text for plain text.")
    if path.suffix == ".json":
        return _json_records(path)
    import datasets

    # a scratch cache, deleted after reading: nothing is written outside the workspace
    with tempfile.TemporaryDirectory(prefix="tailor-data-") as scratch:
        return [dict(r) for r in datasets.load_dataset(TABLE_SUFFIXES[path.suffix],
                                                       data_files=str(path), split="train",
                                                       cache_dir=scratch, keep_in_memory=True)]


def fill(record: dict, template: str) -> str:
    """A field's text, or a template over fields (only the fields it names must be present)."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return _fields_text({k: v for k, v in record.items() if k in names or v is not None}
                        if names else record, template)


def templates(config) -> tuple[str, str]:
    """(prompt template or field, response template or field) for instruction data."""
    if config.template in PRESET_TEMPLATES:
        return PRESET_TEMPLATES[config.template]
    return (config.template or config.prompt_field,
            config.response_template or config.response_field)


def render_instruction(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one exchange in the model's chat template; labels only on the reply."""
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                             tokenize=False)
        tail = full[len(head):] if full.startswith(head) else response + (tokenizer.eos_token or "")
    else:
        head = FALLBACK_FORMAT.format(prompt=prompt)
        tail = response + (tokenizer.eos_token or "")
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return head_ids + tail_ids, [IGNORE] * len(head_ids) + tail_ids


def _instruction_examples(tokenizer, config, spec: str, limit: int | None) -> list[dict]:
    prompt_tpl, response_tpl = templates(config)
    examples, skipped = [], 0
    for record in load_records(spec):
        ids, labels = render_instruction(tokenizer, fill(record, prompt_tpl),
                                         fill(record, response_tpl))
        if len(ids) > config.block_len:  # keep the reply whole: cut the prompt's middle
            reply = sum(1 for x in labels if x != IGNORE)
            if reply >= config.block_len // 2:
                skipped += 1
                continue
            cut = len(ids) - config.block_len
            keep_head = (len(ids) - reply) // 4
            ids = ids[:keep_head] + ids[keep_head + cut:]
            labels = labels[:keep_head] + labels[keep_head + cut:]
        examples.append({"input_ids": ids, "labels": labels})
        if limit and len(examples) >= limit:
            break
    if skipped:
        log.info("skipped %d records whose reply alone exceeds half a block", skipped)
    if not examples:
        raise DataSourceError(f"No usable instruction records in '{spec}' (replies longer than "
                              f"half of block length {config.block_len}?); raise the block length.")
    return examples


def _text_examples(tokenizer, config, spec: str, limit: int | None) -> list[dict]:
    docs, sep = load_documents(spec)
    need_blocks = limit or config.steps * config.batch_size
    ids: list[int] = []
    for start in range(0, len(docs), 64):
        for enc in tokenizer([d + sep for d in docs[start:start + 64]],
                             add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
        if len(ids) >= need_blocks * config.block_len:
            break
    count = min(need_blocks, len(ids) // config.block_len)
    if count < 1:
        raise DataSourceError(f"'{spec}' has only {len(ids)} tokens, fewer than one block of "
                              f"{config.block_len}; shorten the block or add text.")
    return [{"input_ids": ids[i * config.block_len:(i + 1) * config.block_len],
             "labels": ids[i * config.block_len:(i + 1) * config.block_len]} for i in range(count)]


def build_examples(tokenizer, config, spec: str, limit: int | None = None) -> list[dict]:
    if config.format == "instruction":
        return _instruction_examples(tokenizer, config, spec, limit)
    return _text_examples(tokenizer, config, spec, limit)


def records_prompts(config, limit: int = 2) -> list[str]:
    """Default side-by-side prompts: the first held-out instruction prompts (none for text)."""
    if config.format != "instruction" or not config.eval_data:
        return []
    prompt_tpl, _ = templates(config)
    return [fill(r, prompt_tpl) for r in load_records(config.eval_data)[:limit]]


def collate(rows: list[dict], pad_id: int) -> dict:
    """Right-pad a batch; padding gets labels -100 and attention 0."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def masked_perplexity(model, examples: list[dict], batch_size: int = 4,
                      should_stop=lambda: False) -> float:
    """exp(mean NLL) over the label tokens (the replies for instruction data, all for text)."""
    if not examples:
        return float("nan")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            if should_stop():
                break
            batch = collate(examples[start:start + batch_size], 0)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
            labels = batch["labels"][:, 1:].to(device)
            nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                  labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
            total += nll.item()
            count += int((labels != IGNORE).sum())
    finally:
        model.train(was_training)
    return float(torch.tensor(total / max(count, 1)).exp())
