"""The distill command under torchrun: 2 CPU processes (gloo) on tiny models, data parallel."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from studio.models.tiny import build_tiny

from conftest import WIKI_VALID, need_data, run_torchrun


def test_two_process_torchrun(tmp_path, tiny_dir, tokenizer):
    student = build_tiny("llama", tmp_path / "student", tokenizer, seed=1, intermediate_size=48)
    out = tmp_path / "run"
    returncode, stdout, stderr = run_torchrun(
        ["distill", "--teacher", str(tiny_dir("llama")), "--student", str(student),
         "--data", str(need_data(WIKI_VALID)), "--steps", "3", "--batch", "1", "--block", "32",
         "--eval-tokens", "64", "--eval-every", "0", "--save-every", "100", "--out", str(out),
         "--teacher-data", "0.5", "--prompt-tokens", "8"],
        timeout=300)
    assert returncode == 0, stderr[-3000:]
    result = json.loads(stdout)  # exactly one JSON object: only rank 0 prints
    assert result["world_size"] == 2 and result["steps"] == 3 and result["tokens"] == 3 * 2 * 32
    for rank in (0, 1):
        assert f"distill: rank {rank}/2 finished at step 3" in stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # rank 0 alone writes the log
    assert json.loads((out / "summary.json").read_text())["ppl_after"] > 0
    # self-data: rank 0 wrote the teacher's blocks (half of the 7 training blocks), rank 1 read them
    assert load_file(str(out / "teacher-blocks.safetensors"))["blocks"].shape == (4, 32)
