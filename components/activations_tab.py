"""Activations tab: look inside before cutting (per layer, neuron, head and token).

Prompt views are one short forward pass each; dataset statistics run as session jobs (progress and
Stop in the session panel) and are the same cached numbers the Pruning tab uses. Every figure has
a download (standalone HTML in the workspace); the statistics download as CSV.
"""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from components.common import number, ui_errors, wait_for_job
from studio import activations as act
from studio.errors import StudioError
from studio.figures import activations as figs
from studio.session import Session

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = "builtin:python-docs"
SHARED = {"../shared/data/wikitext-2/test.txt": "../shared/data/wikitext-2/test.txt",
          "pubmedqa:../shared/data/pubmedqa/ori_pqal.json:train": "../shared/data/pubmedqa/ori_pqal.json"}
PAIR = ("The doctor said he was tired after the long shift.",
        "The doctor said she was tired after the long shift.")


def _sources() -> list[str]:
    return [BUILTIN] + [spec for spec, path in SHARED.items() if (ROOT / path).exists()]


def _ui_job(fn):
    """ui_errors for generator handlers (errors surface while iterating)."""
    end = object()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        steps = fn(*args, **kwargs)

        def step():
            return next(steps, end)

        step.__name__ = fn.__name__
        while (item := ui_errors(step)()) is not end:
            yield item
    return wrapper


def _plot(label: str):
    plot = gr.Plot(label=label)
    button = gr.DownloadButton(f"Download {label.lower()} (HTML)", size="sm", value=None)
    return plot, button


def create_tab(session: Session) -> dict:
    dims = _dims(session)
    gr.Markdown("See which layers, neurons and heads carry signal before you cut. Prompt views run "
                "at once; dataset statistics run as a job (Stop it in the session panel) and are "
                "shared with the Pruning tab.")
    with gr.Accordion("Prompt views", open=True):
        with gr.Row():
            prompt = gr.Textbox("The capital of France is Paris, and the capital of Italy is",
                                label="Prompt", scale=4)
            component = gr.Dropdown(list(act.COMPONENTS), value="residual stream",
                                    label="Component", scale=1)
            show = gr.Button("Analyse prompt", variant="primary", scale=1)
        heat_plot, heat_dl = _plot("Layer × token heatmap")
        lens_plot, lens_dl = _plot("Logit lens")
        lens_table = gr.Dataframe(label="Logit lens at the last token", interactive=False, wrap=True)
        with gr.Row():
            layer = gr.Slider(0, dims[0] - 1, value=0, step=1, label="Layer")
            head = gr.Slider(0, dims[1] - 1, value=0, step=1, label="Head")
        attn_plot, attn_dl = _plot("Attention pattern")
    with gr.Accordion("Prompt pair", open=False):
        with gr.Row():
            prompt_a = gr.Textbox(PAIR[0], label="Prompt A", scale=2)
            prompt_b = gr.Textbox(PAIR[1], label="Prompt B", scale=2)
            compare = gr.Button("Compare prompts", scale=1)
        pair_plot, pair_dl = _plot("Prompt pair")
    with gr.Accordion("Dataset statistics", open=True):
        with gr.Row():
            source = gr.Dropdown(_sources(), value=BUILTIN, allow_custom_value=True, scale=3,
                                 label="Data source",
                                 info="builtin:python-docs, a file (.txt/.jsonl/...), pubmedqa:PATH:train, hf:NAME")
            tokens = gr.Number(4096, precision=0, minimum=16, label="Tokens", scale=1)
            sort = gr.Checkbox(False, label="Sort neurons by importance", scale=1)
            stats_btn = gr.Button("Compute statistics", variant="primary", scale=1)
        summary = gr.JSON(label="Statistics summary (job id while running)", max_height=260)
        neuron_plot, neuron_dl = _plot("Neuron heatmap")
        head_plot, head_dl = _plot("Head importance")
        infl_plot, infl_dl = _plot("Block influence")
        csv_dl = gr.DownloadButton("Download statistics (CSV)", size="sm", value=None)
        with gr.Row():
            source_b = gr.Dropdown(_sources(), value=_sources()[-1], allow_custom_value=True, scale=3,
                                   label="Second source (e.g. your domain)")
            compare_ds = gr.Button("Compare datasets", scale=1)
        ds_summary = gr.JSON(label="Dataset comparison (job id while running)", max_height=260)
        ds_plot, ds_dl = _plot("Dataset difference")

    def view(name: str, fn, *args):
        """Prompt views run as short heavy jobs: never beside another forward on the same model
        (hooks and the attention implementation are model-wide)."""
        job = session.submit(f"activations: {name}", lambda j: fn(session.working(), *args))
        return wait_for_job(job)

    def save(fig, name: str) -> str:
        path = session.path("activations", f"{name}.html")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(path, include_plotlyjs=True)
        return str(path)

    @ui_errors
    def prompt_heatmap(text, component_value):
        fig = figs.prompt_heatmap_figure(view("heatmap", act.prompt_heatmap, text, component_value))
        return fig, save(fig, "prompt_heatmap")

    @ui_errors
    def logit_lens(text):
        lens = view("logit lens", act.logit_lens, text)
        fig = figs.logit_lens_figure(lens)
        return fig, act.logit_lens_frame(lens), save(fig, "logit_lens")

    @ui_errors
    def attention(text, layer_value, head_value):
        result = view("attention", act.attention_pattern, text, number(layer_value, 0, int),
                      number(head_value, 0, int))
        fig = figs.attention_figure(result)
        return fig, save(fig, "attention_pattern")

    @ui_errors
    def pickers():
        n_layers, n_heads = _dims(session)
        return gr.Slider(maximum=n_layers - 1), gr.Slider(maximum=n_heads - 1)

    @ui_errors
    def compare_prompts(a, b, component_value):
        fig = figs.pair_figure(view("prompt pair", act.compare_prompts, a, b, component_value))
        return fig, save(fig, "prompt_pair")

    def stats_views(source_value, tokens_value, sort_value):
        loaded = session.working()
        group = loaded.adapter.head_layout(loaded.config).group_size
        stats = act.dataset_stats(session, source_value, number(tokens_value, 4096, int))
        views = [figs.neuron_heatmap(stats.act_abs_mean, sort=bool(sort_value)),
                 figs.head_heatmap(stats.head_norm_mean, group),
                 figs.influence_figure(stats.block_influence)]
        csv = session.path("activations", "statistics.csv")
        act.stats_frame(stats, group).to_csv(csv, index=False)
        names = ("neurons", "heads", "block_influence")
        return [x for fig, name in zip(views, names) for x in (fig, save(fig, name))] + [str(csv)]

    @_ui_job
    def activation_stats(source_value, tokens_value, sort_value, progress=gr.Progress()):
        job = act.start_stats_job(session, _source(source_value), number(tokens_value, 4096, int))
        yield [{"job_id": job.id, "status": job.status}] + [gr.skip()] * 7
        result = wait_for_job(job, progress)
        yield [{"job_id": job.id, **result}] + stats_views(_source(source_value), tokens_value,
                                                           sort_value)

    @ui_errors
    def resort(source_value, tokens_value, sort_value):
        stats = act.dataset_stats(session, _source(source_value), number(tokens_value, 4096, int))
        fig = figs.neuron_heatmap(stats.act_abs_mean, sort=bool(sort_value))
        return fig, save(fig, "neurons")

    @_ui_job
    def compare_datasets(a, b, tokens_value, sort_value, progress=gr.Progress()):
        job = act.start_compare_job(session, _source(a), _source(b), number(tokens_value, 4096, int))
        yield {"job_id": job.id, "status": job.status}, gr.skip(), gr.skip()
        result = wait_for_job(job, progress)
        diff = act.compare_datasets(session, _source(a), _source(b), number(tokens_value, 4096, int))
        fig = figs.dataset_diff_figure(diff["diff"], a, b, sort=bool(sort_value))
        yield {"job_id": job.id, **result}, fig, save(fig, "dataset_difference")

    show.click(prompt_heatmap, [prompt, component], [heat_plot, heat_dl], api_name="prompt_heatmap")
    show.click(logit_lens, prompt, [lens_plot, lens_table, lens_dl], api_name="logit_lens")
    show.click(attention, [prompt, layer, head], [attn_plot, attn_dl], api_name="attention_pattern")
    show.click(pickers, None, [layer, head], api_visibility="private")
    for picker in (layer, head):
        picker.release(attention, [prompt, layer, head], [attn_plot, attn_dl],
                       api_visibility="private")
    component.change(prompt_heatmap, [prompt, component], [heat_plot, heat_dl],
                     api_visibility="private")
    compare.click(compare_prompts, [prompt_a, prompt_b, component], [pair_plot, pair_dl],
                  api_name="compare_prompts")
    stats_outputs = [summary, neuron_plot, neuron_dl, head_plot, head_dl, infl_plot, infl_dl, csv_dl]
    stats_btn.click(activation_stats, [source, tokens, sort], stats_outputs, api_name="activation_stats")
    sort.input(resort, [source, tokens, sort], [neuron_plot, neuron_dl], api_visibility="private")
    compare_ds.click(compare_datasets, [source, source_b, tokens, sort], [ds_summary, ds_plot, ds_dl],
                     api_name="compare_datasets")
    return {"act.prompt": prompt, "act.component": component, "act.heatmap": heat_plot,
            "act.layer": layer, "act.head": head, "act.attention": attn_plot,
            "act.logit_lens": lens_plot, "act.pair": pair_plot, "act.source": source,
            "act.tokens": tokens, "act.summary": summary, "act.neurons": neuron_plot,
            "act.heads": head_plot, "act.influence": infl_plot, "act.source_b": source_b,
            "act.dataset_diff": ds_plot}


def _dims(session: Session) -> tuple[int, int]:
    """(layers, query heads) of the working model, for the pickers (a default when none)."""
    if not (session.has("base")):
        return 32, 32
    loaded = session.working()
    return (loaded.adapter.num_layers(loaded.config),
            loaded.adapter.head_layout(loaded.config).num_heads)


def _source(value) -> str:
    value = (value or "").strip()
    if not value:
        raise StudioError(f"No data source given; pick one, e.g. {BUILTIN}.")
    return value
