"""Perplexity of a model on a text source, in fixed windows."""
from studio.cli._common import add_model_arguments, open_session, positive_int
from studio.data import token_blocks
from studio.evaluation import perplexity
from studio.progress import scaled

NAME = "ppl"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--text", required=True, help="text source (see studio.data)")
    parser.add_argument("--max-tokens", type=positive_int, default=8192)
    parser.add_argument("--window", type=positive_int, default=512)
    parser.add_argument("--batch-size", type=positive_int, default=None)


def run(args, progress) -> dict:
    session = open_session(args, scaled(progress, 0.0, 0.3))
    loaded = session.get()
    blocks = token_blocks(loaded.tokenizer, args.text, args.window, args.max_tokens)
    value = perplexity(loaded.model, blocks, args.batch_size, scaled(progress, 0.3, 1.0))
    return {"model": args.model, "text": args.text, "tokens": int(blocks.numel()),
            "window": args.window, "perplexity": round(value, 4)}
