"""LoRA / DoRA (QLoRA on CUDA) specialisation of the working model on domain data.

Flow: `train_lora(session, LoraConfig, job)` copies the working model (student, else base), wraps it
with peft, trains it with the transformers Trainer (live loss and held-out perplexity through
`studio.monitor`), compares before/after, and keeps the result in the session's "lora" role;
`save_adapter` writes the adapter alone, `merge_adapter` folds it into the weights as the student.
Works single-process or under torchrun (data parallel; rank 0 alone writes the metric log).
"""
from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from studio.errors import TrainingError
from studio.evaluation import generate, parameter_count
from studio.jobs import JobStopped
from studio.lora_data import build_examples, collate, masked_perplexity, records_prompts
from studio.models.loading import LoadedModel
from studio.monitor import JobCallback, MetricLog, NullLog, ddp_backend
from studio.progress import Progress, null_progress, scaled

log = logging.getLogger(__name__)

LORA, STUDENT = "lora", "student"
TARGET_GROUPS = ("attention", "mlp")
FINISH = ("keep", "adapter", "merge")


@dataclass
class LoraConfig:
    data: str
    format: str = "text"  # text (packed blocks) | instruction (prompt -> response, loss on response)
    prompt_field: str = "prompt"
    response_field: str = "response"
    template: str = ""  # prompt template over fields, or a preset name ("pubmedqa")
    response_template: str = ""  # response template over fields (else response_field)
    eval_data: str = ""
    targets: list = field(default_factory=lambda: ["attention", "mlp"])  # groups or leaf names
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 2e-4
    steps: int = 100
    block_len: int = 256
    batch_size: int = 4
    dora: bool = False
    qlora: bool = False
    seed: int = 0
    eval_every: int = 25
    eval_examples: int = 32  # held-out examples for perplexity (live and before/after)
    task_examples: int = 0  # PubMedQA test questions for accuracy (0 = skip)
    prompts: list = field(default_factory=list)  # side-by-side prompts (default: held-out ones)
    gen_tokens: int = 48
    resume: bool = False
    run_name: str = "lora"
    finish: str = "keep"  # keep (review first) | adapter (save) | merge (into the student)

    def settings(self) -> dict:
        return asdict(self)


def qlora_available() -> tuple[bool, str]:
    """(available, reason): QLoRA needs CUDA and bitsandbytes."""
    if not torch.cuda.is_available():
        return False, "QLoRA needs a CUDA GPU (none found)."
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "QLoRA needs bitsandbytes (pip install bitsandbytes)."
    return True, "QLoRA available (4-bit NF4 base)."


def target_choices(adapter) -> list[str]:
    return [*adapter.module_names("attention"), *adapter.module_names("mlp")]


def resolve_targets(model, adapter, targets) -> list[str]:
    """Leaf module names for peft; groups 'attention'/'mlp'/'all' expand through the adapter."""
    valid = target_choices(adapter)
    names: list[str] = []
    if not targets:
        raise TrainingError(f"No target modules chosen; pick some of {', '.join(valid)} "
                            "(or the groups attention, mlp, all).")
    for item in targets:
        item = item.strip()
        if item == "all":
            names += valid
        elif item in TARGET_GROUPS:
            names += adapter.module_names(item)
        elif item:
            names.append(item)
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    bad = [n for n in names if n not in valid or n not in present]
    if bad or not names:
        raise TrainingError(f"Target modules {bad or targets} do not exist in this model; choose "
                            f"from {', '.join(valid)} (or the groups attention, mlp, all).")
    return list(dict.fromkeys(names))


def _validate(config: LoraConfig) -> None:
    checks = [(config.rank >= 1, f"rank {config.rank} must be at least 1"),
              (config.steps >= 1, f"steps {config.steps} must be at least 1"),
              (config.batch_size >= 1, f"batch {config.batch_size} must be at least 1"),
              (config.block_len >= 16, f"block length {config.block_len} must be at least 16"),
              (config.lr > 0, f"learning rate {config.lr} must be positive"),
              (0 <= config.dropout < 1, f"dropout {config.dropout} must be in [0, 1)"),
              (config.format in ("text", "instruction"), f"format '{config.format}' is unknown"),
              (config.finish in FINISH, f"finish '{config.finish}' is not one of {FINISH}")]
    for ok, message in checks:
        if not ok:
            raise TrainingError(f"LoRA setting invalid: {message}; fix it and start again.")
    if config.qlora:
        ok, reason = qlora_available()
        if not ok:
            raise TrainingError(f"{reason} Untick QLoRA to train plain LoRA.")


def _wrap(loaded: LoadedModel, config: LoraConfig, targets: list[str]):
    from peft import LoraConfig as PeftConfig, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    if config.qlora:
        model = _quantized_copy(loaded)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_config = PeftConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=targets, use_dora=config.dora, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


def _quantized_copy(loaded: LoadedModel):
    """The working weights reloaded in 4-bit NF4 (saved to the workspace first: it may be pruned)."""
    import tempfile

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as folder:
        loaded.model.save_pretrained(folder)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant,
                                                    device_map={"": loaded.device.index or 0})


def _compare(model, tokenizer, eval_set, prompts, config, progress: Progress, should_stop) -> dict:
    """Held-out perplexity, PubMedQA accuracy and greedy answers of the model as it is now."""
    from studio.tasks import pubmedqa_accuracy

    out = {"eval_ppl": round(masked_perplexity(model, eval_set, config.batch_size,
                                               should_stop), 4) if eval_set else None}
    progress(0.3, "Held-out perplexity done")
    if config.task_examples and config.eval_data.startswith("pubmedqa:"):
        path = config.eval_data[len("pubmedqa:"):].split(":")[0]
        out["pubmedqa"] = pubmedqa_accuracy(model, tokenizer, path, "test", config.task_examples,
                                            scaled(progress, 0.3, 0.8), should_stop)
    out["answers"] = [generate(model, tokenizer, p, config.gen_tokens)["text"] for p in prompts]
    progress(1.0, "Answers generated")
    return out


def train_lora(session, config: LoraConfig, job=None, progress: Progress = null_progress) -> dict:
    """Train an adapter on a copy of the working model; the result waits in the 'lora' role."""
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from studio.checkpoints import SafeTrainer  # checkpoints without pickle

    _validate(config)
    progress = job.progress if job is not None else progress
    should_stop = job.should_stop if job is not None else (lambda: False)
    source_role = STUDENT if session.has(STUDENT) else "base"
    working = session.get(source_role)
    targets = resolve_targets(working.model, working.adapter, config.targets)
    tokenizer = working.tokenizer
    folder = session.path("lora", config.run_name)
    cuda = working.device.type == "cuda"
    args = TrainingArguments(
        output_dir=str(folder / "checkpoints"), max_steps=config.steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.lr,
        lr_scheduler_type="cosine", warmup_steps=min(10, config.steps // 10), weight_decay=0.0,
        logging_steps=max(1, min(10, config.steps // 20)), save_strategy="steps",
        save_steps=max(10, config.eval_every), save_total_limit=2, report_to="none",
        seed=config.seed, use_cpu=not cuda, disable_tqdm=True,
        bf16=working.dtype == torch.bfloat16, remove_unused_columns=False, label_names=["labels"],
        dataloader_pin_memory=False,
        ddp_backend=ddp_backend(cuda),
        ddp_find_unused_parameters=False)
    main = args.process_index == 0  # under torchrun every rank trains; rank 0 logs and reports
    if not main:
        progress = null_progress
    progress(0.01, "Preparing data")
    # packed text: enough distinct blocks for every rank's share of the steps
    train_set = build_examples(tokenizer, config, config.data,
                               limit=config.steps * config.batch_size * args.world_size
                               if config.format == "text" else None)
    eval_set = (build_examples(tokenizer, config, config.eval_data, limit=config.eval_examples)
                if config.eval_data else [])
    prompts = config.prompts or records_prompts(config, limit=2)
    torch.manual_seed(config.seed)
    copy = session.copy_of(source_role)
    peft_model = _wrap(copy, config, targets)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = parameter_count(peft_model)
    with peft_model.disable_adapter():  # every rank compares: no collectives, equal work
        before = _compare(peft_model, tokenizer, eval_set, prompts, config,
                          scaled(progress, 0.02, 0.12), should_stop)
    metrics = MetricLog((job.folder if job is not None else folder) / "metrics.jsonl") \
        if main else NullLog()
    if main and not config.resume and metrics.path.exists():
        metrics.path.unlink()  # a fresh run under the same name starts a fresh log
    metrics.append({"step": 0, "eval_ppl": before["eval_ppl"]})

    def evaluate(step: int) -> dict:
        small = eval_set[: max(4, min(len(eval_set), 16))]
        return {"eval_ppl": round(masked_perplexity(peft_model, small, config.batch_size), 4)}

    tokens_per_step = config.batch_size * config.block_len * args.world_size
    callback = JobCallback(job, metrics, tokens_per_step, evaluate if eval_set and main else None,
                           config.eval_every, label="LoRA")
    trainer = SafeTrainer(model=peft_model, args=args, train_dataset=train_set,
                          data_collator=lambda rows: collate(rows, tokenizer.pad_token_id or 0),
                          callbacks=[callback])
    for printer in (PrinterCallback, ProgressCallback):  # stdout belongs to the CLI's JSON
        trainer.remove_callback(printer)
    resume = None
    if config.resume:
        checkpoints = sorted((folder / "checkpoints").glob("checkpoint-*"),
                             key=lambda p: int(p.name.split("-")[-1]))
        resume = str(checkpoints[-1]) if checkpoints else None
    started = time.time()
    peft_model.train()
    out = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - started
    peft_model.eval()
    if callback.stopped:
        message = (f"LoRA training stopped at step {trainer.state.global_step}; a checkpoint is "
                   f"in {folder / 'checkpoints'}: tick resume to continue.")
        if job is not None:
            job.log(message)
            raise JobStopped(message)
        raise TrainingError(message)
    after = _compare(peft_model, tokenizer, eval_set, prompts, config,
                     scaled(progress, 0.9, 0.99), should_stop)
    copy.model = peft_model
    session.set_model(LORA, copy)
    session.cache["lora_config"] = config.settings()
    result = {"source_role": source_role, "targets": targets, "trainable_params": trainable,
              "total_params": total, "trainable_fraction": round(trainable / total, 6),
              "steps": trainer.state.global_step, "resumed_from": resume,
              "train_loss": round(out.training_loss, 4), "seconds": round(seconds, 1),
              "seconds_per_step": round(seconds / max(trainer.state.global_step, 1), 3),
              "before": before, "after": after, "prompts": prompts,
              "eval_examples": len(eval_set), "train_examples": len(train_set),
              "world_size": args.world_size}
    if before["eval_ppl"] and after["eval_ppl"]:
        result["eval_ppl_change"] = round(after["eval_ppl"] / before["eval_ppl"] - 1, 4)
    if config.finish == "adapter":  # one writer; a merge stays in memory, so every rank merges
        result["adapter_dir"] = str(save_adapter(session, config.run_name) if main
                                    else session.path("adapters", config.run_name))
    elif config.finish == "merge":
        result["merged"] = merge_adapter(session)["student"]
    progress(1.0, "LoRA done")
    return result


def save_adapter(session, name: str = "lora"):
    """Write the adapter alone (adapter_config.json + weights) under workspace/adapters/NAME."""
    loaded = session.get(LORA)
    folder = session.path("adapters", name)
    loaded.model.save_pretrained(str(folder))
    loaded.tokenizer.save_pretrained(str(folder))
    return folder


def merge_adapter(session) -> dict:
    """Fold the adapter into the weights (merge_and_unload); the result becomes the student."""
    loaded = session.get(LORA)
    settings = session.cache.get("lora_config", {})
    if getattr(loaded.model, "is_loaded_in_4bit", False) or settings.get("qlora"):
        raise TrainingError("A QLoRA adapter cannot be merged into 4-bit weights here; save the "
                            "adapter and load it over the float model instead.")
    merged = loaded.model.merge_and_unload()
    merged.eval()
    student = LoadedModel(model=merged, tokenizer=loaded.tokenizer, adapter=loaded.adapter,
                          spec=loaded.spec, source=loaded.source, origin=loaded.origin,
                          history=[*loaded.history, {"step": "lora", **settings}])
    session.set_model(STUDENT, student)
    session.unload(LORA)
    session.record({"step": "lora", **settings})
    return {"student": {"params": parameter_count(merged), "fingerprint": student.fingerprint()}}


def start_lora(session, config: LoraConfig):
    """Submit training as a session job (the UI's entry point)."""
    _validate(config)
    working = session.working()
    resolve_targets(working.model, working.adapter, config.targets)  # fail before queueing
    return session.submit(f"lora {config.run_name}", lambda job: train_lora(session, config, job))


def replay_step(session, settings: dict, progress: Progress = null_progress) -> dict:
    """Re-run a recorded LoRA step (training + merge) from its settings."""
    known = {k: v for k, v in settings.items() if k in LoraConfig.__dataclass_fields__}
    config = LoraConfig(**{**known, "finish": "merge", "resume": False})
    result = train_lora(session, config, progress=progress)
    return {k: v for k, v in result.items() if k not in ("prompts",)}


def perplexity_drop(result: dict) -> float:
    """Fractional fall of held-out perplexity (0.2 = 20% lower after training)."""
    before, after = result["before"]["eval_ppl"], result["after"]["eval_ppl"]
    return 0.0 if not before or not after or math.isnan(before) else 1 - after / before
