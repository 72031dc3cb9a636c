"""Model tab: load a model, see its summary and architecture, try a generation."""
from __future__ import annotations

import gradio as gr

from components.common import number, ui_errors, wait_for_job
from studio.evaluation import generate
from studio.figures import architecture_figure, empty_figure
from studio.session import BASE, Session, model_summary


def create_tab(session: Session) -> dict:
    with gr.Row():
        spec = gr.Textbox(value="default", label="Model",
                          info="'default' (embedded SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file",
                          scale=3)
        dtype = gr.Dropdown(["auto", "float32", "bfloat16", "float16"], value="auto", label="dtype",
                            scale=1)
    with gr.Row():
        trust = gr.Checkbox(False, label="trust_remote_code (runs code from the checkpoint)")
        pickle = gr.Checkbox(False, label="allow pickle (.bin) weights")
        load = gr.Button("Load model", variant="primary")
    summary = gr.JSON(label="Summary", elem_id="model-summary")
    diagram = gr.Plot(label="Architecture")
    with gr.Accordion("Generate", open=True):
        with gr.Row():
            prompt = gr.Textbox("What is the capital of France?", label="Prompt", scale=4)
            max_new = gr.Number(48, label="Max new tokens", precision=0, scale=1)
            role = gr.Dropdown(["working", "base", "student"], value="working", label="Model", scale=1)
        run = gr.Button("Generate")
        answer = gr.Textbox(label="Answer", lines=4)
        timing = gr.JSON(label="Timing")

    @ui_errors
    def load_model(spec_value, dtype_value, trust_value, pickle_value, progress=gr.Progress()):
        job = session.submit(f"load {spec_value}", lambda j: session.load(
            spec_value, role=BASE, dtype=None if dtype_value == "auto" else dtype_value,
            trust_remote_code=bool(trust_value), allow_pickle=bool(pickle_value),
            progress=j.progress))
        wait_for_job(job, progress)
        return describe()

    def describe():
        if not session.has(BASE):
            return {"loaded": False}, empty_figure("No model loaded")
        base = model_summary(session.get(BASE))
        current = model_summary(session.working())
        return current, architecture_figure(current, base)

    @ui_errors
    def summarize():
        return describe()

    @ui_errors
    def run_generate(prompt_value, max_new_value, role_value):
        loaded = session.working() if role_value == "working" else session.get(role_value)
        result = generate(loaded.model, loaded.tokenizer, prompt_value,
                          max_new_tokens=number(max_new_value, 48, int))
        return result["text"], {k: v for k, v in result.items() if k != "text"}

    load.click(load_model, [spec, dtype, trust, pickle], [summary, diagram], api_name="load_model")
    summary_btn = gr.Button("Refresh summary", size="sm")
    summary_btn.click(summarize, None, [summary, diagram], api_name="model_summary")
    run.click(run_generate, [prompt, max_new, role], [answer, timing], api_name="generate")
    return {"model.spec": spec, "model.summary": summary, "model.diagram": diagram,
            "model.refresh": summary_btn, "model.describe": describe}
