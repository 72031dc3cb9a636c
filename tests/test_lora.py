"""LoRA engine on tiny models: only adapter weights train, response-only masking, merge == adapter."""
import json

import pytest
import torch

from studio.errors import TrainingError
from studio.lora import LORA, LoraConfig, merge_adapter, replay_step, save_adapter, train_lora
from studio.lora_data import IGNORE, build_examples, collate, render_instruction
from tests.conftest import PUBMEDQA, need_data


def small_config(tmp_path, **kw):
    data = tmp_path / "chat.jsonl"
    rows = [{"q": f"What is {i} plus {i}?", "a": f"It is {2 * i}."} for i in range(12)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    base = dict(data=str(data), eval_data=str(data), format="instruction", prompt_field="q",
                response_field="a", steps=3, rank=4, alpha=8, lr=5e-3, block_len=64, batch_size=2,
                eval_every=2, eval_examples=4, gen_tokens=4, prompts=["Hello"])
    return LoraConfig(**{**base, **kw})


def test_render_uses_chat_template_and_masks_prompt(tokenizer):
    ids, labels = render_instruction(tokenizer, "Is water wet?", "Yes, it is.")
    text = tokenizer.decode(ids)
    head = tokenizer.apply_chat_template([{"role": "user", "content": "Is water wet?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.startswith(head) and "<|im_start|>assistant" in text
    masked = [i for i, x in enumerate(labels) if x == IGNORE]
    assert masked == list(range(len(masked)))  # the prompt part, all at the start
    reply = tokenizer.decode([x for x in labels if x != IGNORE])
    assert reply.startswith("Yes, it is.") and "Is water wet" not in reply
    assert tokenizer.decode(ids[:len(masked)]) == head
    batch = collate([{"input_ids": ids, "labels": labels}, {"input_ids": ids[:5], "labels": labels[:5]}], 0)
    assert batch["labels"][1, 5:].eq(IGNORE).all() and batch["attention_mask"][1, 5:].eq(0).all()


def test_text_format_packs_blocks(tokenizer, tmp_path):
    config = LoraConfig(data="builtin:python-docs", steps=2, batch_size=2, block_len=32)
    examples = build_examples(tokenizer, config, config.data)
    assert len(examples) == 4 and all(len(e["input_ids"]) == 32 for e in examples)
    assert all(e["labels"] == e["input_ids"] for e in examples)


def test_only_adapter_params_change_and_merge_matches(tiny_session, tmp_path):
    session = tiny_session("llama")
    base_state = {k: v.clone() for k, v in session.get("base").model.state_dict().items()}
    result = train_lora(session, small_config(tmp_path))
    assert result["steps"] == 3 and 0 < result["trainable_fraction"] < 0.2
    assert result["before"]["eval_ppl"] and result["after"]["eval_ppl"] < result["before"]["eval_ppl"]
    peft_model = session.get(LORA).model
    changed_lora = 0
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            changed_lora += 1
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p.detach().cpu(), base_state[key]), name
    assert changed_lora > 0
    assert any(n.endswith("lora_B.default.weight") and p.abs().sum() > 0
               for n, p in peft_model.named_parameters())
    for k, v in session.get("base").model.state_dict().items():  # the teacher is untouched
        assert torch.equal(v, base_state[k])
    folder = save_adapter(session, "tiny")
    assert (folder / "adapter_config.json").exists()
    ids = torch.randint(0, 200, (2, 16))
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=ids).logits
    merge_adapter(session)
    with torch.no_grad():
        merged_logits = session.get("student").model(input_ids=ids).logits
    assert (merged_logits - adapter_logits).abs().max().item() < 1e-4
    assert session.recipe[-1]["step"] == "lora" and session.recipe[-1]["seed"] == 0
    assert not session.has(LORA) and session.get("student").history[-1]["step"] == "lora"


def test_dora_and_replay(tiny_session, tmp_path):
    session = tiny_session("qwen3")
    settings = small_config(tmp_path, dora=True, steps=2, targets=["mlp"]).settings()
    result = replay_step(session, settings)
    assert result["targets"] == ["gate_proj", "up_proj", "down_proj"]
    assert session.has("student") and session.recipe[-1]["dora"] is True


def test_bad_targets_name_the_valid_ones(tiny_session, tmp_path):
    session = tiny_session("llama")
    with pytest.raises(TrainingError) as err:
        train_lora(session, small_config(tmp_path, targets=["q_proj", "qkv_proj"]))
    assert "qkv_proj" in str(err.value) and "o_proj" in str(err.value) and "down_proj" in str(err.value)


def test_qlora_refused_without_cuda(tiny_session, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TrainingError, match="QLoRA"):
        train_lora(tiny_session("llama"), small_config(tmp_path, qlora=True))


def test_pubmedqa_instruction_and_accuracy(tiny_session, tmp_path):
    from studio.tasks import pubmedqa_accuracy

    path = need_data(PUBMEDQA)
    session = tiny_session("llama")
    config = LoraConfig(data=f"pubmedqa:{path}:train", eval_data=f"pubmedqa:{path}:test",
                        format="instruction", template="pubmedqa", block_len=512, eval_examples=2)
    examples = build_examples(session.get().tokenizer, config, config.eval_data, limit=2)
    reply = session.get().tokenizer.decode([x for x in examples[0]["labels"] if x != IGNORE])
    assert "Final answer: " in reply and len(examples[0]["input_ids"]) <= 512
    acc = pubmedqa_accuracy(session.get().model, session.get().tokenizer, path, "test", limit=5)
    assert acc["n"] == 5 and 0 <= acc["accuracy"] <= 1 and sum(acc["predicted"].values()) == 5


def test_stop_leaves_checkpoint_then_resume(tiny_session, tmp_path):
    session = tiny_session("llama")
    config = small_config(tmp_path, steps=4, eval_every=10, prompts=[])

    def stopped_early(job):  # a stop request is honoured at the end of the first step
        job.request_stop()
        return train_lora(session, config, job)

    job = session.submit("lora stop-test", stopped_early).wait(120)
    assert job.status == "stopped" and not session.has(LORA)
    assert list((session.path("lora", "lora", "checkpoints")).glob("checkpoint-1"))
    config.resume = True
    result = train_lora(session, config)
    assert result["resumed_from"].endswith("checkpoint-1") and result["steps"] == 4


def test_cli_lora_prints_before_after(tiny_dir, tmp_path):
    from tests.test_cli import studio

    out = studio("lora", "--model", str(tiny_dir("llama")), "--data", "builtin:python-docs",
                 "--eval", "builtin:python-docs", "--steps", "2", "--block", "32", "--batch", "2",
                 "--rank", "2", "--targets", "q_proj,down_proj", "--eval-examples", "2",
                 "--out", str(tmp_path / "adapter"), "--workspace", str(tmp_path / "ws"), "--merge")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["merged"] and result["before"]["eval_ppl"] > 1 and result["after"]["eval_ppl"] > 1
    assert (tmp_path / "adapter" / "config.json").exists()
    bad = studio("lora", "--model", str(tiny_dir("llama")), "--data", "builtin:python-docs",
                 "--targets", "wq", "--out", str(tmp_path / "x"), "--workspace", str(tmp_path / "ws"))
    assert bad.returncode == 2 and "wq" in bad.stderr.strip().splitlines()[-1]
