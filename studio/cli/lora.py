"""LoRA/DoRA specialisation of a model on domain data; prints before/after metrics.

Runs alone or under torchrun / accelerate launch (data parallel): every rank loads and trains,
rank 0 alone saves to --out and prints the JSON result."""
import sys

from studio.cli._common import add_model_arguments, open_session, positive_int, process_device
from studio.lora import LoraConfig, train_lora
from studio.progress import null_progress, scaled

NAME = "lora"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="training source (text spec, table file, pubmedqa:PATH:train)")
    parser.add_argument("--format", choices=["text", "instruction"], default=None,
                        help="text (packed blocks) or instruction (loss on replies); "
                             "default: instruction when a field or template is given")
    parser.add_argument("--prompt-field", default="prompt")
    parser.add_argument("--response-field", default="response")
    parser.add_argument("--template", default="",
                        help="prompt template over fields, e.g. '{question} {context}', or 'pubmedqa'")
    parser.add_argument("--response-template", default="", help="reply template over fields")
    parser.add_argument("--eval", default="", help="held-out source in the same format")
    parser.add_argument("--steps", type=positive_int, default=100)
    parser.add_argument("--rank", type=positive_int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--targets", default="attention,mlp",
                        help="comma list: attention, mlp, all or module names (q_proj,...)")
    parser.add_argument("--block", type=positive_int, default=256)
    parser.add_argument("--batch", type=positive_int, default=4)
    parser.add_argument("--dora", action="store_true")
    parser.add_argument("--qlora", action="store_true", help="4-bit base (CUDA + bitsandbytes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-examples", type=positive_int, default=32)
    parser.add_argument("--task-examples", type=int, default=0,
                        help="PubMedQA test questions to score before/after (needs --eval pubmedqa:...)")
    parser.add_argument("--prompt", action="append", default=[], help="prompt to answer before/after")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--out", required=True, help="folder for the adapter (or merged model)")
    parser.add_argument("--merge", action="store_true",
                        help="merge the adapter into the weights and save the full model to --out")


def run(args, progress) -> dict:
    from pathlib import Path

    from studio.recipe import Ranks

    args.device = process_device(args.device)
    ranks = Ranks(args.device)
    if not ranks.main:
        progress = null_progress  # one voice: rank 0
    with ranks.rank0_first():  # the workspace and any cached conversion: made once, then read
        session = open_session(args, scaled(progress, 0.0, 0.1))
    fmt = args.format or ("instruction" if args.template or args.response_template
                          or args.prompt_field != "prompt" or args.response_field != "response"
                          else "text")
    config = LoraConfig(
        data=args.data, format=fmt, prompt_field=args.prompt_field,
        response_field=args.response_field, template=args.template,
        response_template=args.response_template, eval_data=args.eval,
        targets=[t for t in args.targets.split(",") if t.strip()], rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, lr=args.lr, steps=args.steps, block_len=args.block,
        batch_size=args.batch, dora=args.dora, qlora=args.qlora, seed=args.seed,
        eval_examples=args.eval_examples, task_examples=args.task_examples, prompts=args.prompt,
        resume=args.resume, finish="merge" if args.merge else "keep")
    result = train_lora(session, config, progress=scaled(progress, 0.1, 0.95))
    sys.stderr.write(f"lora: rank {ranks.rank}/{result['world_size']} finished at step "
                     f"{result['steps']}\n")
    if not ranks.main:
        raise SystemExit(0)  # only rank 0 saves to --out and prints the JSON result
    out = Path(args.out).expanduser().resolve()
    if args.merge:
        student = session.get("student")
        student.model.save_pretrained(str(out))
        student.tokenizer.save_pretrained(str(out))
    else:
        loaded = session.get("lora")
        loaded.model.save_pretrained(str(out))
        loaded.tokenizer.save_pretrained(str(out))
    progress(1.0, f"Saved to {out}")
    result.pop("prompts", None)
    return {"model": args.model, "out": str(out), "merged": args.merge, **result}
