"""Recipes: validated loading, and a headless replay that reproduces the exported checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from studio.errors import RecipeError
from studio.recipe import load_recipe, validate
from tests.conftest import ROOT, run_torchrun

LOAD = {"step": "load", "model": "default"}
EXPORT = {"step": "export", "name": "x"}
PRUNE = {"step": "prune", "mlp_ratio": 0.2}
LORA = {"step": "lora", "data": "builtin:python-docs"}
DISTILL = {"step": "distill"}


@pytest.mark.parametrize("steps,needle", [
    ([PRUNE, LOAD], "'load' must be the first"),
    ([LOAD, LOAD], "'load' must be the first"),
    ([LOAD, EXPORT, PRUNE], "export must be the last"),
    ([LOAD, LORA, PRUNE], "prune and distill must come before lora"),
    ([LOAD, LORA, DISTILL], "prune and distill must come before lora"),
    ([LOAD, {"step": "quantize"}], "is not one of"),
    ([{**LOAD, "modle": "x"}], "unknown settings ['modle']"),
    ([LOAD, {**PRUNE, "mlp_ration": 0.3}], "unknown settings ['mlp_ration']"),
    ([LOAD, {**EXPORT, "folder": "/tmp"}], "unknown settings ['folder']"),
    ([], "no steps"),
    ([{"step": "load"}], "no 'model'"),
])
def test_illegal_recipes_are_refused(steps, needle):
    with pytest.raises(RecipeError) as err:
        validate({"studio_recipe": 1, "steps": steps})
    assert needle in str(err.value)


def test_legal_orders_and_top_level_keys(tmp_path):
    for steps in ([LOAD], [LOAD, EXPORT], [LOAD, PRUNE, DISTILL, PRUNE, LORA, LORA, EXPORT],
                  [LOAD, DISTILL, PRUNE, EXPORT]):
        assert validate({"studio_recipe": 1, "steps": steps}) == steps
    with pytest.raises(RecipeError, match="Unknown recipe keys"):
        validate({"studio_recipe": 1, "steps": [LOAD], "seeds": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_replay_reproduces_the_checkpoint_exactly(tmp_path, tiny_session):
    """load → prune (data-driven, seeded) → export in the studio; `python -m studio run` on the
    written recipe.yaml gives the very same tensors and perplexity."""
    from safetensors.torch import load_file

    from studio.export import ExportConfig, export_model
    from studio.pruning import PruneConfig, apply

    session = tiny_session("llama")
    apply(session, PruneConfig(mlp_ratio=0.25, layers=1, method="activation", calib_tokens=512,
                               calib_block=128, seed=3))
    info = export_model(session, ExportConfig(name="orig", eval_tokens=512, eval_block=128))
    folder = session.path("exports", "orig")
    steps = load_recipe(folder / "recipe.yaml")
    assert [s["step"] for s in steps] == ["load", "prune", "export"]
    assert steps[1]["seed"] == 3 and steps[1]["calib_tokens"] == 512

    out = tmp_path / "replayed"
    run = subprocess.run([sys.executable, "-m", "studio", "run", str(folder / "recipe.yaml"),
                          "--out", str(out), "--workspace", str(tmp_path / "ws2"), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "STUDIO_QUIET": "1"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["steps"] == ["load", "prune", "export"]
    assert result["export"]["verification"]["passed"]
    assert result["perplexity"] == info["perplexity"] and result["perplexity_delta_pct"] == 0.0
    ours, theirs = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].equal(theirs[key]), key
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    replayed_recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert [s["step"] for s in replayed_recipe["steps"]] == ["load", "prune", "export"]


def test_cli_run_refuses_a_bad_recipe_in_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"studio_recipe": 1, "steps": [EXPORT, LOAD]}))
    run = subprocess.run([sys.executable, "-m", "studio", "run", str(recipe), "--workspace",
                          str(tmp_path / "ws")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "STUDIO_QUIET": "1"})
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "'load' must be the first step" in run.stderr


def _studio_run(recipe, out, workspace, timeout=600):
    return subprocess.run([sys.executable, "-m", "studio", "run", str(recipe), "--out", str(out),
                           "--workspace", str(workspace), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "STUDIO_QUIET": "1"})


def test_replay_full_chain(tmp_path, tiny_session):
    """load → prune → distill → LoRA (merged) → export in the studio; `studio run` on the written
    recipe retrains both steps from their seeds and lands on the very same perplexity and tensors."""
    from safetensors.torch import load_file

    from studio.distill import DistillConfig, distill
    from studio.export import ExportConfig, export_model
    from studio.lora import LoraConfig, train_lora
    from studio.pruning import PruneConfig, apply

    session = tiny_session("llama")
    apply(session, PruneConfig(mlp_ratio=0.25, layers=1, method="activation", calib_tokens=512,
                               calib_block=128, seed=3))
    distill(session, DistillConfig(steps=3, batch=1, block=64, eval_tokens=64, eval_every=0,
                                   save_every=100, lr=1e-3, seed=5, run_name="chain"))
    train_lora(session, LoraConfig(data="builtin:python-docs", steps=3, rank=4, alpha=8, lr=5e-3,
                                   block_len=32, batch_size=2, eval_every=0, gen_tokens=2,
                                   prompts=["Hi"], seed=7, finish="merge"))
    info = export_model(session, ExportConfig(name="orig", eval_tokens=512, eval_block=128))
    folder = session.path("exports", "orig")
    assert [s["step"] for s in load_recipe(folder / "recipe.yaml")] == \
        ["load", "prune", "distill", "lora", "export"]

    out = tmp_path / "replayed"
    run = _studio_run(folder / "recipe.yaml", out, tmp_path / "ws2")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["steps"] == ["load", "prune", "distill", "lora", "export"]
    assert result["export"]["verification"]["passed"]
    assert result["reference_perplexity"] == info["perplexity"]
    # same seeds on the same CPU: bit-identical training, so the perplexity is equal (0.5% allowed)
    assert abs(result["perplexity_delta_pct"]) < 0.5
    assert result["perplexity"] == info["perplexity"]
    ours, theirs = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].equal(theirs[key]), key


def test_run_under_torchrun_two_processes(tmp_path, tiny_dir):
    """`torchrun --nproc_per_node 2 -m studio run`: both ranks load and prune, distil together
    (gloo, data parallel), and rank 0 alone exports one verified folder and prints the JSON."""
    from transformers import AutoModelForCausalLM

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"studio_recipe": 1, "steps": [
        {"step": "load", "model": str(tiny_dir("llama"))},
        {"step": "prune", "mlp_ratio": 0.25, "method": "activation", "calib_tokens": 256,
         "calib_block": 128, "seed": 1},
        {"step": "distill", "steps": 2, "batch": 1, "block": 32, "eval_tokens": 64,
         "eval_every": 0, "save_every": 100, "run_name": "ddp"},
        {"step": "export", "name": "ddp", "eval_tokens": 256, "eval_block": 128}]}))
    out, workspace = tmp_path / "exported" / "model", tmp_path / "ws"
    returncode, stdout, stderr = run_torchrun(
        ["run", str(recipe), "--out", str(out), "--workspace", str(workspace)], timeout=400)
    assert returncode == 0, stderr[-3000:]
    result = json.loads(stdout)  # exactly one JSON object: only rank 0 prints
    assert result["world_size"] == 2 and result["steps"] == ["load", "prune", "distill", "export"]
    for rank in (0, 1):
        assert f"run: rank {rank}/2 finished" in stderr
    assert result["export"]["verification"]["passed"]
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # one folder, no temporary left
    runs = list((workspace / "distill").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("ddp-replay-")  # both ranks shared one run
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2 and summary["tokens"] == 2 * 2 * 32
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.intermediate_size == 72 and result["perplexity"] > 1
