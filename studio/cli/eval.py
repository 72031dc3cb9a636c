"""Evaluate a model: perplexity on text sources and lm-eval tasks (local or hub), as JSON."""
from studio.cli._common import add_model_arguments, open_session, positive_int
from studio.data import token_blocks
from studio.evaluation import parameter_count, perplexity
from studio.progress import scaled

NAME = "eval"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--ppl", action="append", default=[],
                        help="text source for perplexity (repeatable; see studio.data)")
    parser.add_argument("--tasks", default="", help="comma-separated lm-eval tasks, e.g. "
                        "pubmedqa_local,arc_easy (hub tasks need the network)")
    parser.add_argument("--limit", type=positive_int, default=None, help="examples per task")
    parser.add_argument("--pubmedqa", default="", help="path to ori_pqal.json (pubmedqa_local)")
    parser.add_argument("--mcq", default="", help="path to a JSONL file (local_mcq)")
    parser.add_argument("--max-tokens", type=positive_int, default=8192)
    parser.add_argument("--window", type=positive_int, default=512)
    parser.add_argument("--batch-size", type=positive_int, default=4)


def run(args, progress) -> dict:
    session = open_session(args, scaled(progress, 0.0, 0.2))
    loaded = session.get()
    out = {"model": args.model, "params": parameter_count(loaded.model), "perplexity": {}}
    for i, source in enumerate(args.ppl):
        blocks = token_blocks(loaded.tokenizer, source, args.window, args.max_tokens)
        out["perplexity"][source] = round(perplexity(loaded.model, blocks, progress=scaled(
            progress, 0.2 + 0.3 * i / len(args.ppl), 0.2 + 0.3 * (i + 1) / len(args.ppl))), 4)
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    if tasks:
        from studio.lm_eval_tasks import run_lm_eval

        settings = {"pubmedqa_path": args.pubmedqa, "mcq_path": args.mcq}
        out["tasks"] = run_lm_eval(loaded, tasks, args.limit, settings, args.batch_size,
                                   progress=scaled(progress, 0.5, 1.0))
    return out
