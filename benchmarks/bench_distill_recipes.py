"""Issue 7 protocol for several distillation recipes from one pruned student (30% MLP, studio):
prune once, evaluate teacher and student once, then 100 steps of 2x256 wikitext-2 valid per recipe.

    .venv/bin/python benchmarks/bench_distill_recipes.py '[{"alpha": 0, "beta": 1, "gamma": 1}, {}]' [TOKENS]
"""
import copy, json, sys, tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_distill as bd
from studio.distill import DistillConfig
from studio.distill_run import run, gap_closed
from studio.pruning import PruneConfig, apply
from studio.session import STUDENT, Session

RECIPES = json.loads(sys.argv[1])
tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
work = Path(tempfile.mkdtemp(prefix="distill-explore-"))
session = Session(work, device=None)
session.load("default", dtype="float32")
teacher = session.get("base")
apply(session, PruneConfig(mlp_ratio=0.3, calib_source=str(bd.DATA / "wikitext-2" / "valid.txt")))
pruned = copy.deepcopy(session.get(STUDENT).model)
sets = bd.eval_sets(teacher.tokenizer, tokens, 512)
ppl = {"teacher": bd.ppls(teacher.model, sets), "pruned": bd.ppls(pruned, sets)}
print(json.dumps(ppl), flush=True)
for i, recipe in enumerate(RECIPES):
    session.get(STUDENT).model.load_state_dict(pruned.state_dict())
    cfg = DistillConfig(data=str(bd.DATA / "wikitext-2" / "valid.txt"), steps=100, batch=2, block=256,
                        eval_every=0, save_every=10 ** 6, run_name=f"r{i}", **recipe)
    s = run(teacher, session.get(STUDENT), cfg, work / "distill" / f"r{i}")
    got = bd.ppls(session.get(STUDENT).model, sets)
    gaps = {k: round(gap_closed(ppl["pruned"][k], got[k], ppl["teacher"][k]), 3) for k in got}
    print(json.dumps({"recipe": recipe, "seconds": s["seconds"], "ppl": got, "gap": gaps}), flush=True)
