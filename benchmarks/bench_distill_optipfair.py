"""optiPfair 0.4.2 distill_model on the same studio-pruned student (deterministic pruning), data,
steps, batch and learning rate; plus the monitoring overhead (studio run vs bare DistillTrainer).

    .venv/bin/python benchmarks/bench_distill_optipfair.py [LR]
"""
import copy, json, sys, tempfile, types
from pathlib import Path
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_distill as bd
from studio.distill import DistillConfig
from studio.distill_run import pack_blocks
from studio.pruning import PruneConfig, apply
from studio.session import STUDENT, Session

work = Path(tempfile.mkdtemp(prefix="opf-distill-"))
session = Session(work, device=None)
session.load("default", dtype="float32")
teacher = session.get("base")
apply(session, PruneConfig(mlp_ratio=0.3, calib_source=str(bd.DATA / "wikitext-2" / "valid.txt")))
sets = bd.eval_sets(teacher.tokenizer, 8192, 512)
LR = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-4
args = types.SimpleNamespace(steps=100, batch=2, block=256, lr=LR)
config = DistillConfig(data=str(bd.DATA / "wikitext-2" / "valid.txt"), steps=100, batch=2, block=256,
                       lr=LR, eval_every=0, save_every=10 ** 6, run_name="bench")
out = {"overhead": bd.overhead(session, config, 20, work)}
print(json.dumps(out), flush=True)
student = copy.deepcopy(session.get(STUDENT).model)
blocks = pack_blocks(teacher.tokenizer, config.data, 256, 100 * 2 * 256)
_, seconds = bd.run_optipfair(student, teacher.model, blocks, args)
out.update(optipfair_seconds=round(seconds, 1), optipfair=bd.ppls(student, sets))
print(json.dumps(out), flush=True)
