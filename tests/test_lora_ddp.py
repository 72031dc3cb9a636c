"""The lora command under torchrun: 2 CPU processes (gloo) on a tiny model, data parallel."""
from __future__ import annotations

import json

from conftest import WIKI_VALID, need_data, run_torchrun


def test_two_process_torchrun(tmp_path, tiny_dir):
    data = str(need_data(WIKI_VALID))
    out, workspace = tmp_path / "adapter", tmp_path / "ws"
    command = ["lora", "--model", str(tiny_dir("llama")), "--data", data, "--eval", data,
               "--steps", "3", "--batch", "1", "--block", "32", "--rank", "2", "--eval-examples", "2",
               "--out", str(out), "--workspace", str(workspace)]
    returncode, stdout, stderr = run_torchrun(command, timeout=300)
    assert returncode == 0, stderr[-3000:]
    result = json.loads(stdout)  # exactly one JSON object: only rank 0 prints
    assert result["world_size"] == 2 and result["steps"] == 3
    assert result["out"] == str(out.resolve()) and not result["merged"]
    assert result["train_examples"] == 3 * 1 * 2  # distinct blocks for both ranks' shares
    assert result["before"]["eval_ppl"] > 1 and result["after"]["eval_ppl"] > 1
    for rank in (0, 1):
        assert f"lora: rank {rank}/2 finished at step 3" in stderr
    rows = [json.loads(line)
            for line in (workspace / "lora" / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_ppl" in r] == [0]  # rank 0 alone writes the log
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "train_loss" in r] == [3]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("adapter_")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert not (out / "config.json").exists()  # an adapter, not a merged model

    # the same run again in the same workspace: a fresh log, not the old rows plus the new ones
    returncode, stdout, stderr = run_torchrun([*command[:-4], "--out", str(tmp_path / "again"),
                                               "--workspace", str(workspace)], timeout=300)
    assert returncode == 0, stderr[-3000:]
    again = (workspace / "lora" / "lora" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in again if '"loss"' in line] == [1, 2, 3]
