"""CUDA checks (run by benchmarks/gpu_check.sh on a machine that has a GPU; skipped elsewhere)."""
import pytest
import torch

pytestmark = pytest.mark.gpu


def test_default_loads_in_bf16_on_cuda(tmp_path):
    from studio.session import Session

    session = Session(tmp_path / "ws")
    loaded = session.load("default")
    assert loaded.device.type == "cuda" and loaded.dtype == torch.bfloat16
    from studio.evaluation import generate

    assert generate(loaded.model, loaded.tokenizer, "What is the capital of France?", 8)["new_tokens"] > 0


def test_memory_is_accounted_and_freed(tmp_path):
    from studio.session import Session

    session = Session(tmp_path / "ws")
    before = torch.cuda.memory_allocated()
    session.load("default")
    loaded_mib = session.devices()[0]["allocated_mib"]
    assert torch.cuda.memory_allocated() - before > 200 << 20  # ~270 MB of bf16 weights
    assert loaded_mib > 200
    session.unload("base")
    assert torch.cuda.memory_allocated() - before < 16 << 20


def test_prune_and_distill_on_cuda(tmp_path):
    import math

    from studio import distill, pruning
    from studio.session import STUDENT, Session

    session = Session(tmp_path / "ws")
    session.load("default")
    config = pruning.PruneConfig(mlp_ratio=0.3, calib_source="builtin:python-docs", calib_tokens=2048)
    student = pruning.apply(session, config)
    assert student.device.type == "cuda"
    assert student.adapter.intermediate_size(student.config) < 1536
    result = distill.replay_step(session, {"steps": 3, "batch": 2, "block": 128, "eval_tokens": 512,
                                           "data": "builtin:python-docs",
                                           "eval_source": "builtin:python-docs"}, lambda f, m="": None)
    assert result["steps"] == 3 and not result["stopped"]
    for key in ("train_loss", "ppl_teacher", "ppl_before", "ppl_after"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    trained = session.get(STUDENT)
    assert trained.device.type == "cuda"
    assert all(p.is_cuda for p in trained.model.parameters())
    assert session.recipe[-1]["step"] == "distill" and session.recipe[-1]["completed_steps"] == 3
