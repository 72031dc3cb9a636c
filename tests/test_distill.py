"""Distillation engine on tiny models: the loss against a hand computation, vocabulary refusal,
stop then resume on the same schedule, the metric log read by the tab, the session recipe."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from studio.distill import DistillConfig, distill, replay_step
from studio.distill_loss import distillation_loss, layer_pairs
from studio.distill_run import check_pair, run
from studio.errors import TrainingError
from studio.models.loading import load_model
from studio.models.tiny import build_tiny
from studio.session import STUDENT, Session

from conftest import WIKI_VALID, need_data


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tokenizer):
    """A depth- and width-pruned-looking student: 3 layers, GLU 48 (teacher: 4 layers, GLU 96)."""
    return build_tiny("llama", tmp_path_factory.mktemp("student"), tokenizer, seed=1,
                      num_hidden_layers=3, intermediate_size=48)


def hand_loss(s_logits, t_logits, s_hidden, t_hidden, ids, mask, alpha, beta, gamma, T, kind, skew):
    """Token by token, straight from the definitions."""
    terms = {"ce": [], "kl": []}
    B, L, _ = s_logits.shape
    for b in range(B):
        for t in range(L - 1):
            if not (mask[b, t] and mask[b, t + 1]):
                continue
            p_s = torch.softmax(s_logits[b, t] / T, -1)
            p_t = torch.softmax(t_logits[b, t] / T, -1)
            terms["ce"].append(-torch.log_softmax(s_logits[b, t], -1)[ids[b, t + 1]])
            if kind == "forward":
                terms["kl"].append(F.kl_div(p_s.log(), p_t, reduction="sum"))
            elif kind == "reverse":
                terms["kl"].append(F.kl_div(p_t.log(), p_s, reduction="sum"))
            else:
                terms["kl"].append(F.kl_div((skew * p_t + (1 - skew) * p_s).log(), p_t, reduction="sum"))
    ce, kl = torch.stack(terms["ce"]).mean(), torch.stack(terms["kl"]).mean()
    cos = []
    for s, t in [(1, 1), (2, 3), (3, 4)]:  # uniform map of 3 student layers onto 4 teacher layers
        real = mask.bool()
        c = F.cosine_similarity(s_hidden[s][real], t_hidden[t][real], dim=-1)
        cos.append((1 - c).mean())
    return alpha * ce + beta * T ** 2 * kl + gamma * torch.stack(cos).mean()


@pytest.fixture(scope="module")
def pair(tiny_dir, student_dir):
    return (load_model(str(tiny_dir("llama")), device="cpu").model,
            load_model(str(student_dir), device="cpu").model)


@pytest.mark.parametrize("kind", ["forward", "reverse", "skew"])
def test_loss_equals_hand_computation(pair, kind):
    teacher, student = pair
    torch.manual_seed(0)
    ids = torch.randint(0, teacher.config.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding in the second row
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    got = distillation_loss(s.logits, t.logits, ids, mask, labels, alpha=0.6, beta=0.4, gamma=0.3,
                            temperature=2.0, kl=kind, skew=0.2, student_hidden=s.hidden_states,
                            teacher_hidden=t.hidden_states, layer_map="uniform")
    want = hand_loss(s.logits, t.logits, s.hidden_states, t.hidden_states, ids, mask,
                     0.6, 0.4, 0.3, 2.0, kind, 0.2)
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-4)
    assert got["kl"].item() > 0 and got["cos"].item() > 0
    # padding is masked everywhere: garbage in padded positions changes nothing
    noisy = s.logits.clone()
    noisy[1, 5:] += 100.0
    again = distillation_loss(noisy, t.logits, ids, mask, labels, alpha=0.6, beta=0.4, temperature=2.0,
                              kl=kind, skew=0.2)
    plain = distillation_loss(s.logits, t.logits, ids, mask, labels, alpha=0.6, beta=0.4,
                              temperature=2.0, kl=kind, skew=0.2)
    assert again["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)


def test_layer_maps():
    assert layer_pairs(3, 4, "uniform") == [(1, 1), (2, 3), (3, 4)]
    assert layer_pairs(2, 4, "last") == [(2, 4)]
    with pytest.raises(TrainingError, match="layer mapping"):
        layer_pairs(2, 4, "middle")


def test_other_vocabulary_is_refused(tiny_dir, student_dir):
    teacher = load_model(str(tiny_dir("llama")), device="cpu")
    student = load_model(str(student_dir), device="cpu")
    student.model.resize_token_embeddings(1000)
    with pytest.raises(TrainingError, match="vocabulary"):
        check_pair(teacher, student)


def test_bad_settings_are_refused():
    with pytest.raises(TrainingError, match="KL kind"):
        DistillConfig(kl="sideways").validate()
    with pytest.raises(TrainingError, match="steps"):
        DistillConfig(steps=0).validate()


class StopAt(TrainerCallback):
    """Ask the job to stop during step `step` (the studio's JobCallback honours it at step end)."""

    def __init__(self, job, step):
        self.job, self.step = job, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.job.request_stop()


def small_config(**overrides) -> DistillConfig:
    return DistillConfig(**{"data": str(need_data(WIKI_VALID)), "steps": 6, "batch": 2, "block": 32,
                            "eval_tokens": 64, "eval_every": 3, "save_every": 100, "lr": 1e-3,
                            **overrides})


def lr_by_step(rows):
    return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}


def test_stop_then_resume_continues_the_schedule(tmp_path, tiny_dir, student_dir):
    from components.distill_tab import charts_for

    session = Session(tmp_path / "ws", device="cpu")
    session.load(str(tiny_dir("llama")))
    session.set_model(STUDENT, load_model(str(student_dir), device="cpu"))
    config = small_config(run_name="split")
    out = session.path("distill", "split")
    job = session.submit("distill split", lambda j: run(session.get("base"), session.get(STUDENT),
                                                        config, out, job=j, callbacks=[StopAt(j, 3)]))
    first = job.wait(300).result
    assert job.status == "done", job.error
    assert first["stopped"] and first["steps"] == 3 and (out / "checkpoint-3").is_dir()
    second = run(session.get("base"), session.get(STUDENT), config, out, resume=True)
    assert second["steps"] == 6 and not second["stopped"]

    whole = Session(tmp_path / "ws2", device="cpu")
    whole.load(str(tiny_dir("llama")))
    whole.set_model(STUDENT, load_model(str(student_dir), device="cpu"))
    summary = distill(whole, small_config(run_name="whole"))
    assert summary["steps"] == 6

    run_name, figures, result = charts_for(session, "split")
    _, whole_figures, _ = charts_for(whole, "whole")
    split_rows = session.path("distill", "split", "metrics.jsonl").read_text().splitlines()
    from studio.monitor import read_metrics
    split_lr = lr_by_step(read_metrics(out / "metrics.jsonl"))
    whole_rows = read_metrics(whole.path("distill", "whole", "metrics.jsonl"))
    whole_lr = lr_by_step(whole_rows)
    speeds = [r["step"] for r in whole_rows if "tokens_per_s" in r]  # step rows only, no closing spike
    assert speeds == [r["step"] for r in whole_rows if "loss" in r] == list(range(1, 7))
    assert sorted(split_lr) == list(range(1, 7)) and len(split_rows) > 6
    for step in range(1, 7):  # same learning rate at the same step as the uninterrupted run
        assert split_lr[step] == pytest.approx(whole_lr[step], rel=1e-9, abs=1e-12), step
    assert split_lr[6] < split_lr[4] < split_lr[2]  # cosine decay, not a restarted schedule

    # the tab's reader: every chart has data, the summary is on disk
    assert run_name == "split" and result["steps"] == 6
    traces = {t.name: t for t in figures["loss"].data}
    assert {"loss", "loss_ce", "loss_kl"} <= set(traces) and len(traces["loss"].x) == 6
    assert len(figures["lr"].data[0].x) == 6 and figures["grad_norm"].data
    assert figures["tokens_per_s"].data
    ppl = figures["perplexity"]
    assert [t.name for t in ppl.data] == ["ppl_student", f"teacher {result['ppl_teacher']:.2f}",
                                          f"before {result['ppl_before']:.2f}"]
    assert list(ppl.data[0].x) == [0, 3, 6] and list(ppl.data[1].x) == [0, 6]
    assert list(ppl.data[2].y) == [result["ppl_before"]] * 2 and ppl.layout.yaxis.type == "log"
    assert not ppl.layout.annotations  # on a log axis an annotation's y is read as log10(y)
    assert math.isfinite(result["ppl_after"]) and "gap_closed" in result
    assert whole_figures["loss"].data

    # session integration: recipe step with every setting, student changed in place, replayable
    step = whole.recipe[-1]
    assert step["step"] == "distill" and step["alpha"] == 0.6 and step["completed_steps"] == 6
    assert whole.get(STUDENT).history[-1]["step"] == "distill"
    # the recorded step replays to the very same student (same seed, same data order)
    again = Session(tmp_path / "ws3", device="cpu")
    again.load(str(tiny_dir("llama")))
    again.set_model(STUDENT, load_model(str(student_dir), device="cpu"))
    replayed = replay_step(again, step, run_name="again")
    assert replayed["steps"] == 6 and again.recipe[-1]["run_name"] == "again"
    for (name, a), b in zip(whole.get(STUDENT).model.named_parameters(),
                            again.get(STUDENT).model.parameters()):
        assert torch.equal(a, b), name


def test_second_run_on_a_fresh_copy_of_the_base_trains(tmp_path, tiny_dir):
    """The first run freezes the base (it is the teacher); a student copied from it afterwards
    must still train (regression: 'element 0 of tensors does not require grad')."""
    session = Session(tmp_path / "ws", device="cpu")
    session.load(str(tiny_dir("llama")))
    first = distill(session, small_config(run_name="first", steps=1, eval_every=0))
    assert first["steps"] == 1
    assert not any(p.requires_grad for p in session.get("base").model.parameters())
    session.unload(STUDENT)
    before = [p.detach().clone() for p in session.copy_of("base").model.parameters()]
    second = distill(session, small_config(run_name="second", steps=3, eval_every=0))
    assert second["steps"] == 3  # step 1 is warm-up at learning rate 0
    after = list(session.get(STUDENT).model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_mlp_only_training_leaves_everything_else_untouched(tmp_path, tiny_dir):
    trainable = "mlp"
    session = Session(tmp_path / "ws", device="cpu")
    session.load(str(tiny_dir("llama")))
    student = session.copy_of("base")
    params = dict(student.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    session.set_model(STUDENT, student)
    distill(session, small_config(run_name=trainable, steps=3, eval_every=0, lr=1e-2,
                                  trainable=trainable))
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert changed and all(".mlp." in n for n in changed), sorted(changed)
    with pytest.raises(TrainingError, match="trainable"):
        small_config(trainable="attention").validate()


def test_replay_of_a_run_stopped_early_stops_at_the_same_step(tmp_path, tiny_dir, student_dir):
    """A distillation the user stopped at step 3 of 6 is recorded with completed_steps 3; its
    replay runs the same 6-step schedule and stops at step 3, giving the very same student."""
    session = Session(tmp_path / "ws", device="cpu")
    session.load(str(tiny_dir("llama")))
    session.set_model(STUDENT, load_model(str(student_dir), device="cpu"))
    job = session.submit("distill stopped", lambda j: distill(
        session, small_config(run_name="early"), job=j, callbacks=[StopAt(j, 3)]))
    job.wait(300)
    assert job.status == "stopped", (job.status, job.error)
    recorded = session.recipe[-1]
    assert recorded["step"] == "distill" and recorded["steps"] == 6
    assert recorded["completed_steps"] == 3
    again = Session(tmp_path / "ws2", device="cpu")
    again.load(str(tiny_dir("llama")))
    again.set_model(STUDENT, load_model(str(student_dir), device="cpu"))
    replayed = replay_step(again, recorded, run_name="again")
    assert replayed["steps"] == 3 and again.recipe[-1]["completed_steps"] == 3
    for (name, a), b in zip(session.get(STUDENT).model.named_parameters(),
                            again.get(STUDENT).model.parameters()):
        assert torch.equal(a, b), name


def test_teacher_rewrites_its_share_of_the_blocks_once(tmp_path, tiny_dir, tokenizer):
    """Self-data: the first round(n · share) blocks keep their prompt and get the teacher's own
    continuation (more likely under the teacher than the original text); the rest is untouched;
    a second call (resume, other ranks) reads the stored blocks; the global RNG is left alone."""
    from safetensors.torch import load_file

    from studio.data import token_blocks
    from studio.evaluation import perplexity
    from studio.jobs import JobStopped
    from studio.teacher_text import FILE, teacher_written

    teacher = load_model(str(tiny_dir("llama")), device="cpu").model
    blocks = token_blocks(tokenizer, str(need_data(WIKI_VALID)), 32, 32 * 4)
    config = small_config(teacher_data=0.5, prompt_tokens=8, block=32)
    rng = torch.get_rng_state()
    written = teacher_written(teacher, blocks, config, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)
    assert written.shape == blocks.shape and torch.equal(written[2:], blocks[2:])
    assert torch.equal(written[:2, :8], blocks[:2, :8]) and not torch.equal(written[:2], blocks[:2])
    assert perplexity(teacher, written[:2]) < perplexity(teacher, blocks[:2])
    stored = tmp_path / FILE
    assert torch.equal(load_file(str(stored))["blocks"], written[:2])
    mtime = stored.stat().st_mtime_ns
    assert torch.equal(teacher_written(teacher, blocks, config, tmp_path), written)
    assert stored.stat().st_mtime_ns == mtime  # read back, not sampled again
    same_seed = teacher_written(teacher, blocks, config, tmp_path / "again")
    other_seed = teacher_written(teacher, blocks, small_config(teacher_data=0.5, prompt_tokens=8, seed=1),
                                 tmp_path / "other")
    assert torch.equal(same_seed, written) and not torch.equal(other_seed, written)
    assert torch.equal(teacher_written(teacher, blocks, small_config(), tmp_path / "none"), blocks)
    with pytest.raises(JobStopped):  # a stop while the teacher writes ends the job, nothing stored
        teacher_written(teacher, blocks, config, tmp_path / "stopped", should_stop=lambda: True)
    assert not (tmp_path / "stopped" / FILE).exists()
    small_config(prompt_tokens=32).validate()  # the prompt length only matters when the teacher writes
    for bad in ({"teacher_data": 1.5}, {"teacher_data": 0.5, "prompt_tokens": 32}, {"sample_temperature": 0}):
        with pytest.raises(TrainingError, match="share|prompt|temperature"):
            small_config(**bad).validate()


def test_distillation_on_teacher_written_text_records_and_stores_it(tmp_path, tiny_dir, student_dir):
    session = Session(tmp_path / "ws", device="cpu")
    session.load(str(tiny_dir("llama")))
    session.set_model(STUDENT, load_model(str(student_dir), device="cpu"))
    summary = distill(session, small_config(run_name="self", steps=3, eval_every=0, teacher_data=1.0,
                                            prompt_tokens=4))
    assert summary["steps"] == 3 and math.isfinite(summary["ppl_after"])
    assert (session.path("distill", "self") / "teacher-blocks.safetensors").is_file()
    assert session.recipe[-1]["teacher_data"] == 1.0 and session.recipe[-1]["prompt_tokens"] == 4
