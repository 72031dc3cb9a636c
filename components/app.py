"""The studio: tabs over one Session plus an always-visible session panel."""
from __future__ import annotations

import importlib

import gradio as gr

from components.session_panel import create_panel
from studio.session import Session

# (label, module): each module has create_tab(session) -> dict[str, Component]
TABS = [
    ("Model", "components.model_tab"),
    ("Activations", "components.activations_tab"),
    ("Pruning", "components.pruning_tab"),
    ("Distillation", "components.distill_tab"),
    ("LoRA", "components.lora_tab"),
    ("Evaluate & Export", "components.export_tab"),
]

CSS = """
#studio-header h1 {margin-bottom: 0}
"""


def build_app(session: Session) -> gr.Blocks:
    elements: dict = {}
    with gr.Blocks(title="Tailor Studio") as demo:
        gr.Markdown("# ✂️ Tailor Studio\nPrune, distill and specialise an LLM for your domain, "
                    "then export a checkpoint plain `transformers` loads.", elem_id="studio-header")
        with gr.Row():
            with gr.Column(scale=4):
                with gr.Tabs():
                    for label, module_name in TABS:
                        with gr.Tab(label, id=module_name.split(".")[-1]) as tab:
                            elements.update(importlib.import_module(module_name).create_tab(session))
                        elements[f"tab.{module_name.split('.')[-1]}"] = tab
            with gr.Column(scale=1, min_width=300):
                elements.update(create_panel(session))
        if "model.describe" in elements:  # on page load, and on return after a prune or merge
            model_view = [elements["model.summary"], elements["model.diagram"]]
            demo.load(elements["model.describe"], None, model_view, api_visibility="private")
            elements["tab.model_tab"].select(elements["model.describe"], None, model_view,
                                             api_visibility="private")
        demo.load(elements["panel.refresh"], None,
                  [elements["panel.overview"], elements["panel.jobs"]], api_visibility="private")
    demo.studio_elements = elements
    return demo
