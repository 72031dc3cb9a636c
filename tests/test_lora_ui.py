"""The LoRA tab through the real studio server (gradio_client): start, poll, save, merge, bad input."""
import time

import pytest
from gradio_client.exceptions import AppError

SMALL = dict(data="builtin:python-docs", fmt="text", eval_data="builtin:python-docs",
             targets=["q_proj", "v_proj"], rank=2, alpha=4, steps=2, block=32, batch=1,
             eval_examples=1, task_examples=0, prompts="", run_name="ui-test")


def wait_done(client, job_id, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = client.predict(job_id, api_name="/job_status")
        if info["status"] in ("done", "failed", "stopped"):
            return info
        time.sleep(1.0)
    raise AssertionError(f"LoRA job {job_id} did not finish in {timeout}s: {info}")


def test_start_lora_poll_save_merge(client):
    client.predict(api_name="/discard_student")  # the server is shared: start from the base
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/start_lora", "/save_lora_adapter", "/merge_lora"} <= set(names)
    job_id = client.predict(**SMALL, api_name="/start_lora")
    assert job_id
    info = wait_done(client, job_id)
    assert info["status"] == "done", info
    result = info["result"]
    assert result["steps"] == 2 and result["targets"] == ["q_proj", "v_proj"]
    assert result["before"]["eval_ppl"] > 1 and result["after"]["eval_ppl"] > 1
    assert result["after"]["answers"] == [] and 0 < result["trainable_fraction"] < 0.01
    saved = client.predict("ui-test", api_name="/save_lora_adapter")
    assert saved["adapter_dir"].endswith("adapters/ui-test")
    merged = client.predict(api_name="/merge_lora")
    assert merged["student"]["params"] == 134_515_008
    status = client.predict(api_name="/session_status")
    assert "student" in status["models"] and "lora" in status["recipe_steps"]


def test_bad_targets_are_one_sentence(client):
    with pytest.raises(AppError) as err:
        client.predict(**{**SMALL, "targets": ["qkv_proj"]}, api_name="/start_lora")
    assert "qkv_proj" in str(err.value) and "q_proj" in str(err.value)
    with pytest.raises(AppError) as err:
        client.predict(**{**SMALL, "targets": []}, api_name="/start_lora")
    assert "No target modules chosen" in str(err.value) and "down_proj" in str(err.value)
