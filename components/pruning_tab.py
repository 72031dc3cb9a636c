"""Pruning tab: importance -> live preview (general vs domain perplexity, size, speed) -> apply.

Layout and wiring only; the handlers live in components/pruning_handlers.py and each makes one
engine call (studio.pruning). The engine keeps scores in the Session; the last preview's plan
(for the heatmaps) is per browser, in a gr.State.
"""
from __future__ import annotations

import logging

import gradio as gr

from components import pruning_logic as logic
from studio.figures import empty_figure
from studio.pruning import DEFAULT_NEURON_METHOD
from studio.session import Session

log = logging.getLogger(__name__)


def create_tab(session: Session) -> dict:
    try:
        from components.pruning_handlers import Handlers, endpoint
        from studio.importance import HEAD_METHODS, LAYER_METHODS, NEURON_METHODS
        handlers = Handlers(session)
    except ImportError as exc:  # the engine is not in this checkout: say so instead of breaking the app
        log.warning("Pruning tab disabled: %s", exc)
        gr.Markdown(f"*Pruning is unavailable: the pruning engine could not be imported ({exc}).*")
        return {}
    n_layers = handlers.layer_count()
    sources = logic.source_choices()
    domain = logic.default_domain()

    gr.Markdown("Choose **what** to cut with importance scores computed on calibration text, "
                "watch the perplexity of a general and a domain text while you move the sliders, "
                "then **Apply** to slice a smaller student (the base stays as the teacher).")
    with gr.Row():
        calib_source = gr.Dropdown(sources, value=logic.BUILTIN, allow_custom_value=True, scale=3,
                                   label="Calibration source",
                                   info="builtin:python-docs, a file (.txt/.jsonl/...), pubmedqa:PATH:train, hf:NAME")
        calib_tokens = gr.Number(4096, label="Calibration tokens", precision=0, minimum=16, scale=1)
        method = gr.Dropdown(list(NEURON_METHODS), value=DEFAULT_NEURON_METHOD, label="Neuron method", scale=1)
        head_method = gr.Dropdown(list(HEAD_METHODS), value="activation", label="Head method", scale=1)
        compute = gr.Button("Compute importance", variant="primary", scale=1)
    with gr.Row():
        with gr.Column(scale=2):
            mlp_ratio = gr.Slider(0, 0.9, value=0.0, step=0.05, label="MLP neurons removed (fraction)",
                                  elem_id="prune-mlp-ratio")
            head_ratio = gr.Slider(0, 0.9, value=0.0, step=0.05, label="Query heads removed (fraction)")
            head_mode = gr.Radio(["per-group", "groups"], value="per-group", label="Head mode",
                                 info="per-group: same number of query heads in every KV group; "
                                      "groups: whole KV groups")
            layers = gr.Slider(0, max(n_layers - 1, 1), value=0, step=1, label="Layers to remove")
            layer_method = gr.Dropdown(list(LAYER_METHODS), value="block_influence", label="Layer method",
                                       info="'manual' removes the layers ticked below")
            with gr.Accordion("Manual layers (layer method 'manual')", open=False):
                manual_layers = gr.CheckboxGroup([(f"L{i}", i) for i in range(n_layers)], value=[],
                                                 show_label=False)
            with gr.Row():
                reconstruct = gr.Checkbox(True, label="Reconstruct down_proj (least squares)",
                                          info="refit after removing neurons; before removed layers, "
                                               "absorb a linear stand-in for them")
                multiple_of = gr.Number(1, label="Width multiple of", precision=0, minimum=1)
        with gr.Column(scale=3):
            with gr.Row():
                general_source = gr.Dropdown(sources, value=logic.default_general(), scale=3,
                                             allow_custom_value=True, label="General preview set")
                use_general = gr.Checkbox(True, label="on", scale=1, min_width=60)
            with gr.Row():
                domain_source = gr.Dropdown(sources, value=domain or "", allow_custom_value=True,
                                            label="Domain preview set", scale=3,
                                            info=None if domain else "give a file of your domain text")
                use_domain = gr.Checkbox(bool(domain), label="on", scale=1, min_width=60)
            preview_tokens = gr.Number(logic.default_preview_tokens(session.device), precision=0,
                                       minimum=16, label="Preview tokens per set")
            result_text = gr.Markdown("*Compute importance, then move a slider to preview.*",
                                      elem_id="prune-preview-text")
            bars = gr.Plot(empty_figure("Move a slider to preview"), label="Preview")
            with gr.Accordion("Details: importance job and last preview", open=False):
                importance = gr.JSON(label="Importance")
                result = gr.JSON(label="Preview")
    with gr.Tabs():
        with gr.Tab("Neurons"):
            neuron_plot = gr.Plot(empty_figure("Compute importance to see the neuron scores"))
        with gr.Tab("Heads"):
            head_plot = gr.Plot(empty_figure("Compute importance to see the head scores"))
        with gr.Tab("Layers"):
            layer_plot = gr.Plot(empty_figure("Compute importance to see the layer scores"))
    with gr.Accordion("Perplexity vs fraction pruned", open=False):
        with gr.Row():
            ratios = gr.Textbox("0, 0.1, 0.2, 0.3, 0.4, 0.5", label="MLP fractions", scale=2)
            compare_methods = gr.CheckboxGroup(list(NEURON_METHODS), value=[DEFAULT_NEURON_METHOD, "activation", "ppm"],
                                               label="Methods to compare", scale=3)
        with gr.Row():
            curve_btn = gr.Button("Curve for the chosen method")
            compare_btn = gr.Button("Compare methods")
        curve_rows = gr.JSON(visible=False)
        curve_plot = gr.Plot(empty_figure("Run the curve to see perplexity vs fraction pruned"))
    with gr.Row():
        apply = gr.Button("Apply: slice into the student", variant="primary")
        discard = gr.Button("Discard the student (start again from the base)")
    applied = gr.JSON(label="Student")
    diagram = gr.Plot(label="Student architecture")
    plan_state = gr.State(None)

    settings = [mlp_ratio, head_ratio, layers, head_mode, layer_method, manual_layers, method,
                head_method, reconstruct, multiple_of, calib_source, calib_tokens, general_source,
                domain_source, use_general, use_domain, preview_tokens]
    view = [result_text, bars, neuron_plot, head_plot, layer_plot]
    preview_args = dict(fn=handlers.preview_pruning, inputs=settings, outputs=[result, plan_state],
                        trigger_mode="always_last", concurrency_limit=1, concurrency_id="prune-preview",
                        show_progress="minimal")
    gr.on([mlp_ratio.release, head_ratio.release, layers.release, head_mode.change,
           layer_method.change, manual_layers.change, reconstruct.change, multiple_of.submit,
           use_general.change, use_domain.change], api_name="preview_pruning", **preview_args
          ).then(handlers.render, [result, plan_state], view, api_visibility="private",
                 show_progress="hidden")
    layer_widgets = [layers, manual_layers]
    after = [diagram, layers, manual_layers, mlp_ratio, head_ratio, result_text, bars]
    compute.click(endpoint(handlers.compute_importance), settings, importance,
                  api_name="compute_importance"
                  ).success(handlers.layer_widgets, None, layer_widgets, api_visibility="private"
                  ).success(api_visibility="private", **preview_args
                            ).then(handlers.render, [result, plan_state], view,
                                   api_visibility="private", show_progress="hidden")
    curve_btn.click(endpoint(handlers.pruning_curve, ("ratios",)), settings + [ratios], curve_rows, api_name="pruning_curve"
                    ).then(handlers.curve_plot, curve_rows, curve_plot, api_visibility="private")
    compare_btn.click(endpoint(handlers.compare_methods, ("ratios", "methods")),
                      settings + [ratios, compare_methods], curve_rows,
                      api_name="compare_methods"
                      ).then(handlers.curve_plot, curve_rows, curve_plot, api_visibility="private")
    apply.click(endpoint(handlers.apply_pruning), settings, applied, api_name="apply_pruning"
                ).success(handlers.after_apply, applied,
                          after,
                          api_visibility="private")
    discard.click(handlers.discard_student, None, applied, api_name="discard_student"
                  ).then(handlers.after_apply, applied,
                         after,
                         api_visibility="private")
    return {"prune.mlp_ratio": mlp_ratio, "prune.head_ratio": head_ratio, "prune.layers": layers,
            "prune.head_mode": head_mode, "prune.layer_method": layer_method,
            "prune.manual_layers": manual_layers, "prune.method": method,
            "prune.head_method": head_method, "prune.reconstruct": reconstruct,
            "prune.multiple_of": multiple_of, "prune.calib_source": calib_source,
            "prune.calib_tokens": calib_tokens, "prune.general_source": general_source,
            "prune.domain_source": domain_source, "prune.preview_tokens": preview_tokens,
            "prune.compute": compute, "prune.result": result, "prune.apply": apply,
            "prune.student": applied}
