"""Prune a model (MLP neurons, attention heads, layers) and write a plain transformers checkpoint."""
from __future__ import annotations

import time

from studio.cli._common import add_model_arguments, open_session, positive_int
from studio.evaluation import parameter_count, perplexity
from studio.importance import HEAD_METHODS, LAYER_METHODS, NEURON_METHODS
from studio.progress import scaled
from studio.pruning import DEFAULT_NEURON_METHOD, DEFAULT_RIDGE, PruneConfig, _calib_blocks, apply, preview, save_pruned

NAME = "prune"


def _fraction(text: str) -> float:
    import argparse

    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--calib", default="builtin:python-docs", help="calibration source")
    parser.add_argument("--calib-tokens", type=positive_int, default=4096)
    parser.add_argument("--calib-block", type=positive_int, default=512)
    parser.add_argument("--mlp", type=_fraction, default=0.0, help="fraction of GLU neurons removed")
    parser.add_argument("--heads", type=_fraction, default=0.0, help="fraction of query heads removed")
    parser.add_argument("--head-mode", choices=["per-group", "groups"], default="per-group")
    parser.add_argument("--head-method", choices=list(HEAD_METHODS), default="activation")
    parser.add_argument("--layers", type=int, default=0, help="number of decoder layers removed")
    parser.add_argument("--layer-method", choices=list(LAYER_METHODS), default="block_influence")
    parser.add_argument("--layer-list", default="", help="with --layer-method manual: e.g. 25,13,14")
    parser.add_argument("--method", choices=list(NEURON_METHODS), default=DEFAULT_NEURON_METHOD)
    parser.add_argument("--reconstruct", action="store_true", default=True,
                        help="least-squares refit of down_proj (default on)")
    parser.add_argument("--no-reconstruct", dest="reconstruct", action="store_false")
    parser.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help="relative refit regulariser")
    parser.add_argument("--multiple-of", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", default="", help="evaluation source (perplexity before/after)")
    parser.add_argument("--eval-tokens", type=positive_int, default=2048)
    parser.add_argument("--out", required=True, help="output folder for the pruned checkpoint")


def _layer_list(text: str) -> list[int] | None:
    from studio.errors import PruningError

    if not text.strip():
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise PruningError(f"--layer-list '{text}' is not a comma-separated list of layer numbers.") \
            from None


def run(args, progress) -> dict:
    started = time.time()
    layer_list = _layer_list(args.layer_list)
    config = PruneConfig(mlp_ratio=args.mlp, head_ratio=args.heads, head_mode=args.head_mode,
                         layers=args.layers or len(layer_list or []), layer_method=args.layer_method,
                         layer_list=layer_list, method=args.method, head_method=args.head_method,
                         reconstruct=args.reconstruct, ridge=args.ridge, multiple_of=args.multiple_of,
                         calib_source=args.calib, calib_tokens=args.calib_tokens,
                         calib_block=args.calib_block, seed=args.seed)
    session = open_session(args, scaled(progress, 0.0, 0.1))
    base = session.get()
    config.validate(base)
    result = {"model": args.model, "settings": {k: v for k, v in vars(config).items() if k != "extra"},
              "params_before": parameter_count(base.model)}
    if args.eval:
        shown = preview(session, config, {"eval": args.eval}, args.eval_tokens,
                        progress=scaled(progress, 0.1, 0.6))
        result.update(baseline_perplexity=round(shown["baseline"]["eval"], 4),
                      preview_perplexity=round(shown["perplexity"]["eval"], 4))
    pruned = apply(session, config, scaled(progress, 0.6, 0.75))
    result["params_after"] = parameter_count(pruned.model)
    out = save_pruned(pruned, args.out)
    result["out"] = str(out)
    progress(0.8, f"Saved {out}; re-loading it with plain transformers")
    if args.eval:
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=pruned.dtype).to(pruned.device)
        blocks = _calib_blocks(session, pruned, args.eval, args.eval_tokens,
                               min(512, args.eval_tokens), None)
        result["reloaded_perplexity"] = round(perplexity(reloaded, blocks, progress=scaled(progress, 0.8, 1.0)), 4)
        result["eval_tokens"] = int(blocks.numel())
    result["seconds"] = round(time.time() - started, 2)
    return result
