"""Replay a recipe.yaml headlessly (load → prune → distill → lora → export); prints final metrics.

Under `torchrun --nproc_per_node N -m studio run ...` (or `accelerate launch`) every process loads
and prunes identically, the training steps run data parallel, and rank 0 alone exports and prints.
"""
import json
import os
import sys
from pathlib import Path

from studio.cli._common import positive_int
from studio.progress import scaled

NAME = "run"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe.yaml written by the studio (or an export folder)")
    parser.add_argument("--out", default=None, help="export the result to this folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present; "
                        "under torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--workspace", default="workspace", help="folder for every output")
    parser.add_argument("--ppl", default="", help="text source for the final perplexity "
                        "(default: the recipe's export eval source)")
    parser.add_argument("--max-tokens", type=positive_int, default=None)


def rank_device(device: str | None) -> str | None:
    """Under torchrun each process takes its own GPU (cuda:LOCAL_RANK); CPU stays CPU."""
    if "LOCAL_RANK" not in os.environ or device not in (None, "", "auto", "cuda"):
        return device
    import torch

    return f"cuda:{os.environ['LOCAL_RANK']}" if torch.cuda.is_available() else "cpu"


def run(args, progress) -> dict:
    from studio.recipe import final_metrics, load_recipe, replay

    path = Path(args.recipe)
    recipe_file = path / "recipe.yaml" if path.is_dir() else path
    steps = load_recipe(recipe_file)
    info_file = recipe_file.parent / "export_info.json"
    reference = json.loads(info_file.read_text()) if info_file.is_file() else None
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        progress = lambda fraction, message="": None  # noqa: E731 (one voice: rank 0)
    outcome = replay(steps, args.workspace, device=rank_device(args.device), out=args.out,
                     overwrite=args.overwrite, progress=scaled(progress, 0.0, 0.9))
    if outcome["world_size"] > 1:
        sys.stderr.write(f"run: rank {outcome['rank']}/{outcome['world_size']} finished "
                         f"{len(outcome['steps'])} steps\n")
    if outcome["rank"] != 0:
        raise SystemExit(0)  # only rank 0 exports and prints the JSON result
    result = final_metrics(outcome, steps, args.ppl, args.max_tokens,
                           scaled(progress, 0.9, 1.0), reference)
    result["world_size"] = outcome["world_size"]
    return result
