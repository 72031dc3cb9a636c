"""Replay a recipe.yaml headlessly (load → prune → distill → lora → export); prints final metrics."""
from pathlib import Path

from studio.cli._common import positive_int
from studio.progress import scaled

NAME = "run"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe.yaml written by the studio (or an export folder)")
    parser.add_argument("--out", default=None, help="export the result to this folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    parser.add_argument("--workspace", default="workspace", help="folder for every output")
    parser.add_argument("--ppl", default="", help="text source for the final perplexity "
                        "(default: the recipe's export eval source)")
    parser.add_argument("--max-tokens", type=positive_int, default=None)


def run(args, progress) -> dict:
    from studio.recipe import final_metrics, load_recipe, replay

    import json

    path = Path(args.recipe)
    recipe_file = path / "recipe.yaml" if path.is_dir() else path
    steps = load_recipe(recipe_file)
    info_file = recipe_file.parent / "export_info.json"
    reference = json.loads(info_file.read_text()) if info_file.is_file() else None
    outcome = replay(steps, args.workspace, device=args.device, out=args.out,
                     overwrite=args.overwrite, progress=scaled(progress, 0.0, 0.9))
    return final_metrics(outcome, steps, args.ppl, args.max_tokens,
                         scaled(progress, 0.9, 1.0), reference)
