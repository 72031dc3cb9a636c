"""lm-eval through its Python API on the in-memory model; the local PubMedQA task runs offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from studio.lm_eval_tasks import LmEvalError, run_lm_eval, task_choices
from tests.conftest import PUBMEDQA, ROOT, need_data, wait_until


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


def test_lm_eval_job_reports_progress_and_honours_stop(tiny_session):
    """As a session job: progress climbs to 1.0 with the scores cached for the comparison; a stop
    requested mid-run ends the job as stopped within seconds and the session takes the next job."""
    import time

    from studio.lm_eval_tasks import submit_lm_eval

    need_data(PUBMEDQA)
    session = tiny_session("llama")
    settings = {"pubmedqa_path": str(PUBMEDQA)}
    job = submit_lm_eval(session, "working", ["pubmedqa_local"], 4, settings).wait(300)
    assert job.status == "done", job.error
    assert job.fraction == 1.0 and job.result["pubmedqa_local"]["sample_len"] == 4
    log = job.log_tail(200)
    assert "lm-eval: scored 12 requests" in log and "lm-eval: " in log.split("scored")[0]
    from studio.compare import model_key
    assert "pubmedqa_local" in session.cache["lm_eval"][model_key(session.working())]

    long = submit_lm_eval(session, "working", ["pubmedqa_local"], 400, settings)
    wait_until(lambda: long.message.startswith("lm-eval: ") or long.status in ("done", "failed"),
              300, "the first progress update")
    assert long.status == "running", (long.status, long.error)
    session.jobs.stop(long.id)
    asked = time.time()
    long.wait(60)
    assert long.status == "stopped" and time.time() - asked < 10, (long.status, long.error)
    assert long.fraction < 1.0
    after = session.submit("after the stop", lambda j: "ok").wait(30)
    assert after.status == "done" and after.result == "ok"


def test_hub_task_offline_fails_in_one_sentence(tiny_session):
    """A hub task whose data is not available offline (conftest sets HF_HUB_OFFLINE=1): the job
    fails with the studio's one sentence, not lm-eval's traceback."""
    from studio.lm_eval_tasks import submit_lm_eval

    session = tiny_session("llama")
    job = submit_lm_eval(session, "working", ["arc_easy"], 2, {}).wait(600)
    assert job.status == "failed"
    message = job.error
    assert message.startswith("lm-eval could not prepare ['arc_easy'] ("), message
    assert message.endswith("so connect to the network or use a local task "
                            "(pubmedqa_local, local_mcq)."), message
    assert "\n" not in message and "Traceback" not in message
    assert session.submit("after the failure", lambda j: "ok").wait(30).status == "done"
