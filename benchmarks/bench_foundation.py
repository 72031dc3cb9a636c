"""Foundation benchmark: perplexity and forward tokens/s of the default model (CPU or CUDA).

Run: .venv/bin/python benchmarks/bench_foundation.py [--tokens 8192]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    from studio.data import token_blocks
    from studio.evaluation import forward_tokens_per_second, perplexity
    from studio.models.loading import load_model

    started = time.time()
    loaded = load_model("default", device=args.device)
    load_s = time.time() - started
    rows = []
    for name, spec in [("wikitext-2 test", str(DATA / "wikitext-2" / "test.txt")),
                       ("PubMedQA test contexts", f"pubmedqa:{DATA / 'pubmedqa' / 'ori_pqal.json'}:test"),
                       ("python docs", "builtin:python-docs")]:
        blocks = token_blocks(loaded.tokenizer, spec, 512, args.tokens)
        t = time.time()
        ppl = perplexity(loaded.model, blocks)
        rows.append((name, ppl, blocks.numel() / (time.time() - t)))
    tps = forward_tokens_per_second(loaded.model, blocks[:4])
    print(f"device {loaded.device}, dtype {loaded.dtype}, load {load_s:.1f}s (cached)\n")
    print("| text (first N tokens, 512-token windows) | tokens | perplexity | eval tokens/s |")
    print("|---|---|---|---|")
    for name, ppl, speed in rows:
        print(f"| {name} | {args.tokens} | {ppl:.2f} | {speed:.0f} |")
    print(f"\nforward pass: {tps:.0f} tokens/s (batch of 2×512)")


if __name__ == "__main__":
    main()
