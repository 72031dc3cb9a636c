"""Faults: stopping a distillation at random moments, `kill -9` during a CLI run then --resume,
and a crash inside a job. Tiny models and short blocks keep it to a couple of minutes."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from studio.data import token_blocks
from studio.distill import DistillConfig, run_folder, start_distillation
from studio.distill_run import METRICS_FILE, _last_checkpoint
from studio.evaluation import perplexity
from studio.jobs import FINISHED
from studio.session import STUDENT, Session

from conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small local text (fast to tokenize; the Trainer cycles over its blocks)."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("faults") / "corpus.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics)[:12]), encoding="utf-8")
    return path


def _checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


# ------------------------------------------------------------------------ (a) stop ten times
def test_stop_distillation_at_random_moments(tmp_path, tiny_dir, corpus):
    from transformers import AutoModelForCausalLM

    session = Session(tmp_path / "workspace", device="cpu")
    base = session.load(str(tiny_dir("llama")))
    base_sum = _checksum(base.model)
    blocks = token_blocks(base.tokenizer, str(corpus), 32, 128)
    rng = random.Random(20261204)
    seen_steps = []
    for i in range(10):
        config = DistillConfig(data=str(corpus), steps=100_000, batch=1, block=32, eval_tokens=32,
                               eval_every=0, save_every=100_000, log_every=25, lr=1e-3, warmup=0,
                               run_name=f"stop-{i}", seed=i)
        job = start_distillation(session, config)
        wait_until(lambda: job.status != "queued", 60, "the job to start")
        time.sleep(rng.uniform(0.0, 2.5))  # anywhere: baseline, Trainer set-up or mid-training
        session.jobs.stop(job.id)
        job.wait(180)
        assert job.status == "stopped", (job.status, job.error)
        checkpoint = _last_checkpoint(run_folder(session, config.run_name))
        assert checkpoint is not None, f"stop #{i} left no checkpoint"
        step = int(checkpoint.name.split("-")[-1])
        seen_steps.append(step)
        student = session.get(STUDENT)
        reloaded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=student.dtype).eval()
        in_memory, on_disk = perplexity(student.model, blocks), perplexity(reloaded, blocks)
        assert in_memory == pytest.approx(on_disk, rel=1e-4), (i, step, in_memory, on_disk)
        assert session.recipe[-1]["step"] == "distill" and session.recipe[-1]["completed_steps"] == step
        follow_up = session.submit(f"follow-up {i}", lambda j: perplexity(student.model, blocks[:1]))
        assert follow_up.wait(60).status == "done"
    assert _checksum(session.get().model) == base_sum  # the teacher never moved
    assert not session.jobs.active()
    assert len(set(seen_steps)) > 1, f"every stop landed on the same step {seen_steps}"


# ------------------------------------------------------------------------ (b) kill -9, resume
def _steps_logged(out: Path) -> list[int]:
    rows = []
    path = out / METRICS_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the kill may cut the last line
            if "loss" in row:
                rows.append(int(row["step"]))
    return rows


def test_kill_dash_nine_then_resume(tmp_path, tiny_dir, corpus):
    tiny, out = tiny_dir("llama"), tmp_path / "run"
    save_every, steps = 4, 24
    argv = [sys.executable, "-m", "studio", "distill", "--teacher", str(tiny), "--student", str(tiny),
            "--data", str(corpus), "--out", str(out), "--steps", str(steps), "--batch", "1",
            "--block", "32", "--eval-tokens", "32", "--eval-every", "0", "--save-every",
            str(save_every), "--log-every", "1", "--lr", "1e-3", "--device", "cpu"]
    env = {**os.environ, "STUDIO_QUIET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: proc.poll() is not None
                    or max(_steps_logged(out), default=0) >= 2 * save_every + 1,
                    300, "the run to pass two checkpoints")
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(random.Random(7).uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    reached = max(_steps_logged(out))
    assert reached < steps, "the run finished before it could be killed; raise --steps"
    last = _last_checkpoint(out)
    assert last is not None
    resumed_from = int(last.name.split("-")[-1])
    assert reached - resumed_from <= save_every, (reached, resumed_from)  # at most one interval lost
    # a kill during a save leaves a checkpoint folder without trainer_state.json (written last):
    # make one for certain, resume must skip it rather than fail on it
    partial = out / f"checkpoint-{resumed_from + save_every}"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes((last / "model.safetensors").read_bytes()[:1000])
    (partial / "trainer_state.json").unlink(missing_ok=True)
    assert _last_checkpoint(out) == last
    logged_before = len(_steps_logged(out))

    done = subprocess.run([*argv, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["steps"] == steps and not summary["stopped"]
    after = _steps_logged(out)[logged_before:]
    assert after and after[0] == resumed_from + 1, (resumed_from, after[:3])  # continued, not restarted
    assert after[-1] == steps and after == sorted(after)
    assert int(Path(summary["checkpoint"]).name.split("-")[-1]) == steps


# ------------------------------------------------------------------------ (c) crash in a job
def test_crash_inside_a_job_leaves_the_rest_alone(tmp_path, tiny_dir, monkeypatch):
    import studio.pruning as pruning

    session = Session(tmp_path / "workspace", device="cpu")
    base = session.load(str(tiny_dir("llama")))
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    fingerprint = base.fingerprint()
    blocks = token_blocks(base.tokenizer, "builtin:python-docs", 32, 64)
    ppl = perplexity(base.model, blocks)

    real_apply_plan = pruning.apply_plan

    def apply_then_crash(loaded, plan, refit):  # half-way through surgery on the copy
        real_apply_plan(loaded, plan, refit)
        raise RuntimeError("injected fault during surgery")

    monkeypatch.setattr(pruning, "apply_plan", apply_then_crash)
    config = pruning.PruneConfig(mlp_ratio=0.25, reconstruct=False, calib_tokens=64, calib_block=32)
    gate = __import__("threading").Event()
    crashing = session.submit("prune (crashes)", lambda job: (gate.wait(30), pruning.apply(session, config,
                                                                                           job.progress)))
    queued = session.submit("perplexity", lambda job: perplexity(base.model, blocks))  # heavy, behind it
    light = session.submit("light", lambda job: "ok", heavy=False)
    assert light.wait(30).result == "ok"  # a light job runs while the heavy one holds the device
    gate.set()
    crashing.wait(120)
    queued.wait(120)

    assert crashing.status == "failed"
    assert crashing.error == "RuntimeError: injected fault during surgery"
    assert queued.status == "done" and queued.result == pytest.approx(ppl, rel=1e-6)
    # the job panel shows it: the listing the session panel renders, and the job's own files
    listed = {j["id"]: j for j in session.status()["jobs"]}
    assert listed[crashing.id]["status"] == "failed"
    assert "injected fault" in listed[crashing.id]["error"]
    assert "failed: RuntimeError: injected fault" in crashing.to_dict()["message"]
    assert json.loads((crashing.folder / "result.json").read_text())["status"] == "failed"
    assert "Traceback" in (crashing.folder / "log.txt").read_text()  # details in the log only
    # models untouched: no half-pruned student, base weights and identity unchanged, no recipe step
    assert not session.has(STUDENT)
    assert base.fingerprint() == fingerprint
    for name, tensor in base.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert [s["step"] for s in session.recipe] == ["load"]
    # and the session still takes work
    monkeypatch.setattr(pruning, "apply_plan", real_apply_plan)
    again = session.submit("prune", lambda job: pruning.apply(session, config, job.progress)).wait(120)
    assert again.status == "done" and session.has(STUDENT)
    assert all(j.status in FINISHED for j in session.jobs.jobs.values())
