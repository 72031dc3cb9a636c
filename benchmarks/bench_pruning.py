"""Pruning quality benchmark: the studio's methods side by side with optiPfair on the same tokens.

MLP (GLU) width pruning at 20/30/40% calibrated on wikitext-2 valid, depth pruning (3 layers),
evaluated on the first N tokens (512-token windows) of wikitext-2 test, the PubMedQA test-split
contexts and builtin:python-docs. Every number comes from studio.data.token_blocks +
studio.evaluation.perplexity, so optiPfair and the studio see identical tokens.

Run:   .venv/bin/python benchmarks/bench_pruning.py [--tokens 8192] [--quick] [--cache FILE]
optiPfair (optional, not a project dependency; its columns are skipped when absent):
       .venv/bin/pip install --no-deps optipfair==0.4.2   (needs torch, transformers, tqdm, click, numpy)
`--cache FILE` keeps finished rows in a JSON file so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
WIKI_VALID = str(DATA / "wikitext-2" / "valid.txt")
TEXTS = {"wikitext": str(DATA / "wikitext-2" / "test.txt"),
         "pubmedqa": f"pubmedqa:{DATA / 'pubmedqa' / 'ori_pqal.json'}:test",
         "python": "builtin:python-docs"}
LABELS = {"wikitext": "wikitext-2 test", "pubmedqa": "PubMedQA test", "python": "python docs"}
RATIOS = (0.2, 0.3, 0.4)
WIKI_TARGET = {0.2: 35.7, 0.3: 42.2, 0.4: 53.4}
DEPTH_WIKI_TARGET = 40.0
OPTIPFAIR_HINT = ".venv/bin/pip install --no-deps optipfair==0.4.2"
DATA_METHODS = ("activation_mix", "activation", "act_x_weight", "taylor")  # refit rows (and slice rows without --quick)
STATIC_METHODS = ("ppm",)
DEPTH_METHODS = ("block_influence", "iterative_influence", "ppl")


class Rows:
    """Finished results by key, optionally persisted so a long run can resume."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.data = json.loads(self.path.read_text()) if self.path and self.path.is_file() else {}

    def get(self, key: str, fn):
        if key not in self.data:
            started = time.time()
            self.data[key] = fn()
            print(f"  [{time.time() - started:5.0f}s] {key}: {self.data[key]}", file=sys.stderr, flush=True)
            if self.path:
                self.path.write_text(json.dumps(self.data, indent=1))
        return self.data[key]


def optipfair_module():
    try:
        import optipfair
    except ImportError:
        return None
    logging.getLogger("optipfair").setLevel(logging.WARNING)
    return optipfair


def run_optipfair(rows: Rows, base, blocks, calib, ratios, evaluate) -> dict:
    """optiPfair 0.4.2: data-driven (PPM × activation-norm hybrid, 'MAW' + dataloader) width
    pruning, static PPM at the first ratio, and its depth default (the last 3 layers)."""
    from optipfair.pruning.depth import prune_model_depth
    from optipfair.pruning.mlp_glu import prune_model_mlp_glu

    loader = [(calib[i:i + 2],) for i in range(0, calib.shape[0], 2)]

    def width(ratio, data):
        def go():
            model = copy.deepcopy(base)
            prune_model_mlp_glu(model, neuron_selection_method="MAW", pruning_percentage=ratio * 100,
                                dataloader=loader if data else None, show_progress=False)
            return evaluate(model, blocks)
        return go

    def depth():
        model = copy.deepcopy(base)
        prune_model_depth(model, num_layers_to_remove=3, show_progress=False)
        return evaluate(model, blocks)

    out = {f"data:{r}": rows.get(f"optipfair:data:{r}", width(r, True)) for r in ratios}
    out[f"static:{ratios[0]}"] = rows.get(f"optipfair:static:{ratios[0]}", width(ratios[0], False))
    out["depth:last3"] = rows.get("optipfair:depth:last3", depth)
    return out


def studio_rows(rows: Rows, session, sources, tokens, args) -> dict:
    """Masked previews (equal to the applied model within 0.1%) for every method/refit/ratio."""
    from studio.pruning import PruneConfig, preview

    def ppl(config):
        return lambda: {k: round(v, 2) for k, v in
                        preview(session, config, sources, eval_tokens=tokens)["perplexity"].items()}

    common = dict(calib_source=WIKI_VALID, calib_tokens=args.calib_tokens, seed=0)
    out = {}
    variants = [(m, True) for m in args.methods if m in DATA_METHODS]
    variants += [(m, False) for m in args.methods if m in DATA_METHODS and not args.quick]
    variants += [(m, False) for m in args.methods if m not in DATA_METHODS]
    for method, refit in variants:
        for ratio in args.ratios:
            extra = {"ridge": args.ridge} if args.ridge is not None else {}
            config = PruneConfig(mlp_ratio=ratio, method=method, reconstruct=refit, **common, **extra)
            key = f"studio:{method}:{'refit' if refit else 'slice'}:{config.ridge}:{ratio}"
            out[(method, refit, ratio)] = rows.get(key, ppl(config))
    # with the depth refit (the default) and without (block_influence plain: the reference)
    depth_variants = [(m, True) for m in args.depth_methods]
    depth_variants += [(m, False) for m in args.depth_methods
                       if not args.quick or m == "block_influence"]
    for method, refit in depth_variants:
        config = PruneConfig(layers=3, layer_method=method, reconstruct=refit, **common)
        key = f"studio:depth:{method}" + (":refit" if refit else "")

        def depth(config=config):
            result = preview(session, config, sources, eval_tokens=tokens)
            return {**{k: round(v, 2) for k, v in result["perplexity"].items()},
                    "layers": result["plan"]["drop_layers"]}
        out[("depth", method, refit)] = rows.get(key, depth)
    return out


def fmt(value, target=None) -> str:
    if value is None:
        return "–"
    mark = "" if target is None else (" ✓" if value <= target else " ✗")
    return f"{value:.2f}{mark}"


def width_table(base, opf, ours, ratios, texts) -> list[str]:
    head = "| method (calibrated on wikitext-2 valid) | refit | " + " | ".join(
        f"{int(r * 100)}% {LABELS[t]}" for r in ratios for t in texts) + " |"
    lines = [head, "|" + "---|" * (2 + len(ratios) * len(texts))]
    lines.append("| unpruned | – | " + " | ".join(fmt(base[t]) for _ in ratios for t in texts) + " |")
    if opf:
        lines.append("| optiPfair 0.4.2 data-driven (PPM × ‖X‖) | – | " + " | ".join(
            fmt(opf[f"data:{r}"][t]) for r in ratios for t in texts) + " |")
        lines.append(f"| optiPfair 0.4.2 static PPM | – | " + " | ".join(
            fmt(opf[f"static:{r}"][t]) if f"static:{r}" in opf else "–" for r in ratios for t in texts)
            + " |")
    for (method, refit, ratio) in sorted({(m, f, None) for (m, f, *_ ) in ours if m != "depth"},
                                         key=lambda k: (k[0], not k[1])):
        cells = []
        for r in ratios:
            got = ours.get((method, refit, r))
            for t in texts:
                value = got and got.get(t)
                if value is None:
                    cells.append("–")
                elif t == "wikitext":
                    cells.append(fmt(value, WIKI_TARGET.get(r)))
                elif opf and f"data:{r}" in opf:
                    cells.append(fmt(value, opf[f"data:{r}"][t]))
                else:
                    cells.append(fmt(value))
        lines.append(f"| studio {method} | {'ridge refit' if refit else 'slice'} | " + " | ".join(cells) + " |")
    return lines


def depth_table(base, opf, ours, texts) -> list[str]:
    lines = ["| depth: remove 3 of 30 layers | layers removed | " + " | ".join(LABELS[t] for t in texts) + " |",
             "|" + "---|" * (2 + len(texts))]
    lines.append("| unpruned | – | " + " | ".join(fmt(base[t]) for t in texts) + " |")
    if opf and "depth:last3" in opf:
        lines.append("| optiPfair 0.4.2 default (last 3) | 27, 28, 29 | " + " | ".join(
            fmt(opf["depth:last3"][t]) for t in texts) + " |")
    one_shot = ours.get(("depth", "block_influence", False))
    for method in DEPTH_METHODS:
        for refit in (False, True):
            got = ours.get(("depth", method, refit))
            if not got:
                continue
            reference = one_shot if one_shot and got is not one_shot else None
            cells = [fmt(got[texts[0]], DEPTH_WIKI_TARGET)]
            cells += [fmt(got[t], reference[t] if reference else None) for t in texts[1:]]
            layers = ", ".join(str(i) for i in got["layers"])
            label = f"studio {method}" + (" + depth refit" if refit else "")
            lines.append(f"| {label} | {layers} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="evaluation tokens per text")
    parser.add_argument("--calib-tokens", type=int, default=4096)
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--methods", nargs="+", default=list(DATA_METHODS + STATIC_METHODS))
    parser.add_argument("--depth-methods", nargs="*", default=list(DEPTH_METHODS))
    parser.add_argument("--ridge", type=float, default=None, help="refit ridge (default: the engine's)")
    parser.add_argument("--quick", action="store_true", help="data methods with the refit only")
    parser.add_argument("--no-optipfair", action="store_true")
    parser.add_argument("--cache", default=None, help="JSON file to keep finished rows (resume)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    import torch

    from studio.data import token_blocks
    from studio.evaluation import perplexity
    from studio.session import Session

    rows = Rows(args.cache)
    session = Session(Path("/tmp") / "tailor-bench-pruning", device=args.device)
    loaded = session.load("default")
    blocks = {t: token_blocks(loaded.tokenizer, s, 512, args.tokens) for t, s in TEXTS.items()}

    def evaluate(model, which=blocks):
        return {t: round(perplexity(model, b), 2) for t, b in which.items()}

    base = rows.get("base", lambda: evaluate(loaded.model))
    opf = None
    optipfair = None if args.no_optipfair else optipfair_module()
    if optipfair is None:
        print(f"> optiPfair columns skipped: {'--no-optipfair' if args.no_optipfair else 'not installed'}"
              f" (install: `{OPTIPFAIR_HINT}`)\n")
    else:
        calib = token_blocks(loaded.tokenizer, WIKI_VALID, 512, args.calib_tokens, seed=0)
        with torch.no_grad():
            opf = run_optipfair(rows, loaded.model, blocks, calib, args.ratios, evaluate)
    ours = studio_rows(rows, session, TEXTS, args.tokens, args)
    texts = list(TEXTS)
    print(f"device {loaded.device}, dtype {loaded.dtype}; evaluation: first {args.tokens} tokens of each "
          f"text in 512-token windows; calibration: {args.calib_tokens} tokens of wikitext-2 valid "
          "(seeded document shuffle, seed 0), the same tokens for optiPfair and the studio.\n")
    print("\n".join(width_table(base, opf, ours, args.ratios, texts)))
    print(f"\n✓/✗: wikitext vs the target ({', '.join(f'{int(r * 100)}% ≤ {WIKI_TARGET[r]}' for r in args.ratios if r in WIKI_TARGET)}); "
          "PubMedQA and python docs vs optiPfair data-driven at the same ratio.\n")
    print("\n".join(depth_table(base, opf, ours, texts)))
    print(f"\n✓/✗: wikitext ≤ {DEPTH_WIKI_TARGET}; the other texts vs one-shot block influence.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
