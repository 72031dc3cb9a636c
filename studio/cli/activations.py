"""Activation statistics of a model on a text source: safetensors + JSON index + HTML figures."""
from __future__ import annotations

import json
from pathlib import Path

from studio import activations as act
from studio.cli._common import add_model_arguments, open_session, positive_int
from studio.figures import activations as figs
from studio.progress import scaled

NAME = "activations"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--text", required=True, help="text source for the statistics (see studio.data)")
    parser.add_argument("--max-tokens", "--tokens", dest="max_tokens", type=positive_int, default=4096)
    parser.add_argument("--out", required=True, help="output folder (statistics, index.json, *.html)")
    parser.add_argument("--compare-text", default=None,
                        help="a second source: also write the neuron difference (compare − text)")
    parser.add_argument("--prompt", default=None,
                        help="also write the prompt views (layer×token heatmap, logit lens, attention)")
    parser.add_argument("--layer", type=int, default=0, help="layer of the attention pattern")
    parser.add_argument("--head", type=int, default=0, help="head of the attention pattern")
    parser.add_argument("--no-figures", action="store_true", help="write the statistics only")


def _save_stats(out: Path, stats) -> str:
    from safetensors.torch import save_file

    tensors = {k: getattr(stats, k).contiguous() for k in
               ("act_abs_mean", "act_sq_mean", "head_norm_mean", "block_influence")}
    save_file(tensors, out / "statistics.safetensors")
    return "statistics.safetensors"


def run(args, progress) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    session = open_session(args, scaled(progress, 0.0, 0.2))
    loaded = session.working()
    group = loaded.adapter.head_layout(loaded.config).group_size
    end = 0.6 if args.compare_text else 0.95
    stats = act.dataset_stats(session, args.text, args.max_tokens, progress=scaled(progress, 0.2, end))
    summary = act.stats_summary(stats, group)
    files = {"statistics": _save_stats(out, stats), "csv": "statistics.csv"}
    act.stats_frame(stats, group).to_csv(out / "statistics.csv", index=False)
    views = {}
    if not args.no_figures:
        views.update(neurons=figs.neuron_heatmap(stats.act_abs_mean),
                     heads=figs.head_heatmap(stats.head_norm_mean, group),
                     block_influence=figs.influence_figure(stats.block_influence))
    if args.compare_text:
        cmp = act.compare_datasets(session, args.text, args.compare_text, args.max_tokens,
                                   progress=scaled(progress, 0.6, 0.95))
        summary["compare"] = {"source": args.compare_text, "top_neurons": cmp["top_neurons"]}
        if not args.no_figures:
            views["dataset_difference"] = figs.dataset_diff_figure(cmp["diff"], args.text,
                                                                   args.compare_text)
    if args.prompt and not args.no_figures:
        views["prompt_heatmap"] = figs.prompt_heatmap_figure(act.prompt_heatmap(loaded, args.prompt))
        views["logit_lens"] = figs.logit_lens_figure(act.logit_lens(loaded, args.prompt))
        views["attention"] = figs.attention_figure(
            act.attention_pattern(loaded, args.prompt, args.layer, args.head))
    for name, fig in views.items():
        fig.write_html(out / f"{name}.html", include_plotlyjs=True)
        files[name] = f"{name}.html"
    index = {"model": args.model, "fingerprint": loaded.fingerprint(), "text": args.text,
             "tokens": int(stats.tokens), "files": files, "summary": summary}
    (out / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    progress(1.0, f"Wrote {len(files)} files to {out}")
    return {"out": str(out), "files": files, **summary}
