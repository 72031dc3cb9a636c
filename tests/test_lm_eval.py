"""lm-eval through its Python API on the in-memory model; the local PubMedQA task runs offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from studio.lm_eval_tasks import LmEvalError, run_lm_eval, task_choices
from tests.conftest import PUBMEDQA, ROOT, need_data


def test_local_pubmedqa_task_runs_through_lm_eval(default_model):
    need_data(PUBMEDQA)
    seen = []
    scores = run_lm_eval(default_model, ["pubmedqa_local"], limit=3,
                         settings={"pubmedqa_path": str(PUBMEDQA)},
                         progress=lambda f, m="": seen.append((f, m)))
    task = scores["pubmedqa_local"]
    assert task["sample_len"] == 3 and 0.0 <= task["acc,none"] <= 1.0
    assert task["score"] == task["acc,none"]
    assert seen and seen[-1][0] == pytest.approx(1.0)


def test_local_task_needs_its_data_path_and_unknown_tasks_are_named(tiny_dir):
    from studio.models.loading import load_model

    loaded = load_model(str(tiny_dir("llama")), device="cpu")
    with pytest.raises(LmEvalError, match="needs its data file; set 'pubmedqa_path'"):
        run_lm_eval(loaded, ["pubmedqa_local"], limit=2, settings={})
    with pytest.raises(LmEvalError, match="does not exist"):
        run_lm_eval(loaded, ["pubmedqa_local"], limit=2, settings={"pubmedqa_path": "/no/file.json"})
    with pytest.raises(LmEvalError, match="No lm-eval task"):
        run_lm_eval(loaded, [], limit=2)
    assert "pubmedqa_local" in task_choices() and "arc_easy" in task_choices()


def test_cli_eval_prints_perplexity_and_task_scores(tiny_dir, tmp_path):
    need_data(PUBMEDQA)
    run = subprocess.run([sys.executable, "-m", "studio", "eval", "--model", str(tiny_dir("llama")),
                          "--ppl", "builtin:python-docs", "--max-tokens", "256", "--window", "128",
                          "--tasks", "pubmedqa_local", "--limit", "3", "--pubmedqa", str(PUBMEDQA),
                          "--workspace", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "STUDIO_QUIET": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["perplexity"]["builtin:python-docs"] > 1
    assert out["tasks"]["pubmedqa_local"]["sample_len"] == 3
