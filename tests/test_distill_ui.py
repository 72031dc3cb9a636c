"""The distillation tab's endpoints through gradio_client on the real studio (default model)."""
from __future__ import annotations

import json
import time

from safetensors.torch import load_file


def wait_status(client, job_id, wanted, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = client.predict(job_id, api_name="/job_status")
        if info["status"] in wanted:
            return info
        time.sleep(1.0)
    raise AssertionError(f"job {job_id} still {info['status']} after {timeout}s: {info}")


SMALL = dict(data="builtin:python-docs", eval_source="", batch=1, block=32, eval_tokens=64,
             eval_every=1, lr=1e-5)


def test_start_poll_and_stop(client, studio_server):
    job_id = client.predict(**SMALL, run_name="ui-short", steps=2, teacher_data=0.5, prompt_tokens=8,
                            api_name="/start_distillation")
    assert isinstance(job_id, str) and job_id
    info = wait_status(client, job_id, {"done", "failed", "stopped"})
    assert info["status"] == "done", info
    assert info["result"]["steps"] == 2 and info["result"]["ppl_after"] > 0
    run = studio_server["workspace"] / "distill" / "ui-short"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_kl" in r for r in rows) and any(r.get("final") for r in rows)
    written = load_file(str(run / "teacher-blocks.safetensors"))["blocks"]  # self-data: half of 3 blocks
    assert written.shape == (2, 32)
    assert "distill" in client.predict(api_name="/session_status")["recipe_steps"]

    long_id = client.predict(**SMALL, run_name="ui-long", steps=500, api_name="/start_distillation")
    running = wait_status(client, long_id, {"running", "failed", "done"})
    assert running["status"] == "running", running
    client.predict(long_id, api_name="/stop_job")
    stopped = wait_status(client, long_id, {"stopped", "failed", "done"})
    assert stopped["status"] == "stopped", stopped
    summary = json.loads((studio_server["workspace"] / "distill" / "ui-long" / "summary.json").read_text())
    assert summary["stopped"] and 0 < summary["steps"] < 500
    assert (studio_server["workspace"] / "distill" / "ui-long" / f"checkpoint-{summary['steps']}").is_dir()
