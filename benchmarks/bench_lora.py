"""LoRA benchmark: the default model specialised on PubMedQA (PQA-L train split, 500 PMIDs) and
judged on the held-out official test split (500 PMIDs): answer perplexity and yes/no/maybe accuracy.

Run: .venv/bin/python benchmarks/bench_lora.py [--steps 150] [--eval-examples 64] [--task-examples 100]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
PUBMEDQA = DATA / "pubmedqa" / "ori_pqal.json"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--block", type=int, default=384)
    parser.add_argument("--eval-examples", type=int, default=64, help="held-out answers for perplexity")
    parser.add_argument("--task-examples", type=int, default=100, help="held-out questions for accuracy (500 = all)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the full result here")
    args = parser.parse_args()
    from studio.lora import LoraConfig, perplexity_drop, train_lora
    from studio.session import Session

    session = Session(tempfile.mkdtemp(prefix="bench-lora-"), device=args.device)
    session.load("default")
    config = LoraConfig(data=f"pubmedqa:{PUBMEDQA}:train", eval_data=f"pubmedqa:{PUBMEDQA}:test",
                        format="instruction", template="pubmedqa", steps=args.steps, rank=args.rank,
                        alpha=args.alpha, lr=args.lr, batch_size=args.batch, block_len=args.block,
                        eval_every=50, eval_examples=args.eval_examples,
                        task_examples=args.task_examples, gen_tokens=40)
    started = time.time()
    last = [0.0]

    def progress(fraction, message=""):
        if time.time() - last[0] > 30:
            last[0] = time.time()
            print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)

    result = train_lora(session, config, progress=progress)
    total = time.time() - started
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    before, after = result["before"], result["after"]
    acc_b, acc_a = before["pubmedqa"], after["pubmedqa"]
    print(f"device {session.device}, dtype {session.get().dtype}, {args.steps} steps × batch "
          f"{args.batch} (block {args.block}), LoRA r={args.rank} α={args.alpha:g} lr={args.lr:g} "
          f"on attention+MLP, total {total / 60:.1f} min\n")
    print("| metric | before | after | change |")
    print("|---|---|---|---|")
    print(f"| held-out answer perplexity ({result['eval_examples']} PQA-L test answers) | "
          f"{before['eval_ppl']:.2f} | {after['eval_ppl']:.2f} | {-perplexity_drop(result) * 100:+.1f}% |")
    print(f"| yes/no/maybe accuracy ({acc_a['n']} PQA-L test questions) | {acc_b['accuracy'] * 100:.1f}% | "
          f"{acc_a['accuracy'] * 100:.1f}% | {(acc_a['accuracy'] - acc_b['accuracy']) * 100:+.1f} pts |")
    print(f"| majority baseline on those questions (55.2% on all 500) | "
          f"{acc_b['majority_baseline'] * 100:.1f}% | {acc_a['majority_baseline'] * 100:.1f}% | "
          f"beats it after: {'yes' if acc_a['beats_majority'] else 'no'} |")
    print(f"| predicted answers | {acc_b['predicted']} | {acc_a['predicted']} | |")
    print(f"\ntrainable parameters: {result['trainable_params']:,} of {result['total_params']:,} "
          f"({result['trainable_fraction'] * 100:.2f}%); time per step {result['seconds_per_step']:.2f} s; "
          f"final train loss {result['train_loss']:.3f}")
    for prompt, b, a in zip(result["prompts"], before["answers"], after["answers"]):
        print(f"\n**Q:** {prompt[:160]}...\n- before: {b[:200]}\n- after: {a[:200]}")


if __name__ == "__main__":
    main()
