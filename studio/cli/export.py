"""Export a model as a verified checkpoint (safetensors, tokenizer, card, recipe) plain transformers loads."""
from studio.cli._common import add_model_arguments, open_session, positive_int
from studio.export import ExportConfig, export_model, zip_folder
from studio.progress import scaled

NAME = "export"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--name", required=True, help="folder name under WORKSPACE/exports")
    parser.add_argument("--out", default=None, help="write to this folder instead (any path)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--eval-source", default="builtin:python-docs",
                        help="text source for the card's perplexity ('' to skip)")
    parser.add_argument("--eval-tokens", type=positive_int, default=2048)
    parser.add_argument("--zip", action="store_true", help="also write NAME.zip beside the folder")


def run(args, progress) -> dict:
    session = open_session(args, scaled(progress, 0.0, 0.3))
    config = ExportConfig(name=args.name, overwrite=args.overwrite, eval_source=args.eval_source,
                          eval_tokens=args.eval_tokens)
    info = export_model(session, config, scaled(progress, 0.3, 1.0), dest=args.out)
    if args.zip:
        info["zip"] = str(zip_folder(info["folder"]))
    return info
