"""Recovery by distillation: the studio's distiller next to optiPfair 0.4.2's `distill_model`.

Protocol (issue 7): prune 30% of the default model's MLP width with the studio, distil for 100
steps of 2×256 tokens of wikitext-2 valid, then measure perplexity of the teacher, the pruned and
the distilled student on the first 8192 tokens of wikitext-2 test (same source as training, where
CE also teaches the corpus' odd formatting), the PubMedQA test contexts and builtin:python-docs
(unlike texts: the ones that count). Gap closed = (PPL_pruned − PPL_distilled) / (PPL_pruned −
PPL_teacher). optiPfair gets the same pruned student, data blocks, steps, batch and learning rate.

    .venv/bin/python benchmarks/bench_distill.py [--steps 100 --lr 1e-4 --json out.json]
    # optiPfair side (not a project dependency): .venv/bin/pip install optipfair==0.4.2
    # (without it, or with --skip-optipfair, only the studio column is measured)

Also measures the monitoring overhead (--overhead-steps N): steps/s of the studio run (JobCallback,
metric log) over the same DistillTrainer without the studio's callbacks.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from studio.data import token_blocks  # noqa: E402
from studio.distill import DistillConfig  # noqa: E402
from studio.distill_run import gap_closed, pack_blocks, run, training_arguments  # noqa: E402
from studio.distill_trainer import BlockDataset, DistillTrainer  # noqa: E402
from studio.evaluation import perplexity  # noqa: E402
from studio.session import STUDENT, Session  # noqa: E402

TEXTS = {"wikitext-2 test": str(DATA / "wikitext-2" / "test.txt"),
         "PubMedQA test contexts": f"pubmedqa:{DATA / 'pubmedqa' / 'ori_pqal.json'}:test",
         "python docs": "builtin:python-docs"}


def eval_sets(tokenizer, tokens: int, window: int) -> dict:
    return {name: token_blocks(tokenizer, spec, window, tokens) for name, spec in TEXTS.items()}


def ppls(model, sets: dict) -> dict:
    model.eval()
    return {name: round(perplexity(model, blocks), 3) for name, blocks in sets.items()}


def run_optipfair(student, teacher, train_blocks, args) -> tuple[dict, float]:
    from optipfair.distillation.trainer import distill_model

    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in train_blocks[:args.steps * args.batch]],
        batch_size=args.batch, shuffle=True, generator=g)
    started = time.time()
    distill_model(student, teacher, loader, alpha=0.6, beta=0.4, temperature=2.0, epochs=1,  # its defaults
                  learning_rate=args.lr, accumulation_steps=1, warmup_ratio=0.05, show_progress=False)
    return {}, time.time() - started


def overhead(session, config, steps: int, work: Path) -> dict:
    """Steps/s with the studio's callbacks over the bare DistillTrainer, same student copy."""
    out = {}
    for label in ("bare", "studio"):
        student = session.copy_of(STUDENT)
        cfg = copy.deepcopy(config)
        cfg.steps, cfg.eval_every, cfg.save_every = steps, 0, 10 ** 6
        if label == "studio":
            summary = run(session.get("base"), student, cfg, work / f"overhead-{label}")
            out[label] = steps / summary["seconds"]
        else:
            args = training_arguments(cfg, work / "overhead-bare", student.device, student.dtype)
            blocks = pack_blocks(student.tokenizer, cfg.data, cfg.block, steps * cfg.batch * cfg.block)
            trainer = DistillTrainer(model=student.model, args=args, train_dataset=BlockDataset(blocks),
                                     teacher=session.get("base").model, loss_settings=cfg.loss_settings())
            trainer.remove_callback(PrinterCallback)
            started = time.time()
            trainer.train()
            out[label] = steps / (time.time() - started)
        del student
    return {"steps_per_s": {k: round(v, 3) for k, v in out.items()},
            "ratio": round(out["studio"] / out["bare"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--beta", type=float, default=0.4)
    parser.add_argument("--gamma", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--kl", default="forward")
    parser.add_argument("--method", default="activation", help="pruning importance method")
    parser.add_argument("--calib-tokens", type=int, default=4096)
    parser.add_argument("--mlp-ratio", type=float, default=0.3)
    parser.add_argument("--calib", default=str(DATA / "wikitext-2" / "valid.txt"),
                        help="pruning calibration text (default: the training text, so no eval text leaks)")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--eval-window", type=int, default=512)
    parser.add_argument("--overhead-steps", type=int, default=0)
    parser.add_argument("--skip-optipfair", action="store_true")
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from studio.pruning import PruneConfig, apply

    work = Path(args.workspace or tempfile.mkdtemp(prefix="bench-distill-"))
    session = Session(work, device=None)
    session.load("default", dtype="float32")
    teacher = session.get("base")
    apply(session, PruneConfig(mlp_ratio=args.mlp_ratio, method=args.method, calib_source=args.calib,
                               calib_tokens=args.calib_tokens))
    pruned_copy = copy.deepcopy(session.get(STUDENT).model)
    sets = eval_sets(teacher.tokenizer, args.eval_tokens, args.eval_window)
    result = {"settings": vars(args), "device": str(session.device),
              "ppl": {"teacher": ppls(teacher.model, sets), "pruned": ppls(session.get(STUDENT).model, sets)}}
    print(json.dumps(result["ppl"]), file=sys.stderr)

    config = DistillConfig(data=str(DATA / "wikitext-2" / "valid.txt"), steps=args.steps,
                           batch=args.batch, block=args.block, lr=args.lr, alpha=args.alpha,
                           beta=args.beta, gamma=args.gamma, temperature=args.temperature,
                           kl=args.kl, eval_every=0, save_every=10 ** 6,
                           run_name="bench")
    summary = run(teacher, session.get(STUDENT), config, work / "distill" / "bench")
    result["studio_seconds"] = summary["seconds"]
    result["ppl"]["studio"] = ppls(session.get(STUDENT).model, sets)

    if not args.skip_optipfair:
        try:
            import optipfair  # noqa: F401
        except ImportError:
            print("optiPfair is not installed: .venv/bin/pip install optipfair==0.4.2", file=sys.stderr)
        else:
            train_blocks = pack_blocks(teacher.tokenizer, config.data, args.block,
                                       args.steps * args.batch * args.block)
            _, seconds = run_optipfair(pruned_copy, teacher.model, train_blocks, args)
            result["optipfair_seconds"] = round(seconds, 1)
            result["ppl"]["optipfair"] = ppls(pruned_copy, sets)
    if args.overhead_steps:
        result["overhead"] = overhead(session, config, args.overhead_steps, work)

    ppl = result["ppl"]
    result["gap_closed"] = {
        who: {name: gap_closed(ppl["pruned"][name], ppl[who][name], ppl["teacher"][name]) for name in TEXTS}
        for who in ("studio", "optipfair") if who in ppl}
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def markdown(result: dict) -> str:
    ppl, gaps = result["ppl"], result["gap_closed"]
    whos = [w for w in ("teacher", "pruned", "studio", "optipfair") if w in ppl]
    lines = ["| text | " + " | ".join(f"PPL {w}" for w in whos) + " | " +
             " | ".join(f"gap closed {w}" for w in gaps) + " |",
             "|---" * (1 + len(whos) + len(gaps)) + "|"]
    for name in TEXTS:
        cells = [f"{ppl[w][name]:.2f}" for w in whos]
        cells += ["n/a" if gaps[w][name] is None else f"{gaps[w][name] * 100:.0f}%" for w in gaps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    s = result["settings"]
    lines.append(f"\n{s['steps']} steps × {s['batch']}×{s['block']} tokens, lr {s['lr']}, studio loss "
                 f"α {s['alpha']} β {s['beta']} γ {s['gamma']} T {s['temperature']} KL {s['kl']}, "
                 f"pruned by {s['method']} on {s['calib_tokens']} calibration tokens, "
                 f"MLP pruned {s['mlp_ratio']:.0%}, device {result['device']}; studio "
                 f"{result['studio_seconds']}s, optiPfair {result.get('optipfair_seconds', 'n/a')}s")
    if "overhead" in result:
        lines.append(f"monitoring overhead: {result['overhead']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
