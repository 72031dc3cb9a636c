"""Evaluate & Export tab: comparison table + charts + CSV, lm-eval, side-by-side generation,
verified export + zip, push to the Hub, stakeholder report."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from components.common import number, ui_errors, wait_for_job
from studio import compare, report
from studio.export import ExportConfig, export_model, push_to_hub, zip_folder
from studio.figures.evaluation import comparison_figures, overview_figure
from studio.lm_eval_tasks import submit_lm_eval, task_choices

PUBMEDQA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pubmedqa" / "ori_pqal.json"
N_CHARTS = 5


def _domain_default() -> str:
    return f"pubmedqa:{PUBMEDQA}:test" if PUBMEDQA.is_file() else ""


def create_tab(session) -> dict:
    with gr.Accordion("Compare every model in the session", open=True):
        with gr.Row():
            general = gr.Textbox("builtin:python-docs", label="General text (perplexity)", scale=2)
            domain = gr.Textbox(_domain_default(), label="Domain text (perplexity)", scale=2)
            tokens = gr.Number(2048, label="Tokens per source", precision=0, scale=1)
        compare_btn = gr.Button("Compare models", variant="primary")
        table = gr.Dataframe(label="Comparison", interactive=False, wrap=True)
        csv = gr.File(label="CSV download")
        overview = gr.Plot(label="Relative to base")
        charts = [gr.Plot(show_label=False) for _ in range(N_CHARTS)]
    with gr.Accordion("lm-eval tasks", open=False):
        with gr.Row():
            tasks = gr.Dropdown(task_choices(), value=["pubmedqa_local"], multiselect=True,
                                label="Tasks (hub tasks need the network)", scale=3)
            limit = gr.Number(20, label="Examples per task", precision=0, scale=1)
            eval_role = gr.Dropdown(["working", "base", "student"], value="working", label="Model")
        pubmedqa = gr.Textbox(str(PUBMEDQA), label="PubMedQA ori_pqal.json (pubmedqa_local)")
        lm_btn = gr.Button("Run lm-eval")
        lm_out = gr.JSON(label="Scores")
    with gr.Accordion("Side-by-side generation", open=True):
        with gr.Row():
            prompt = gr.Textbox("What is the capital of France?", label="Prompt", scale=4)
            gen_tokens = gr.Number(48, label="Max new tokens", precision=0, scale=1)
            sample = gr.Checkbox(False, label="Sample (else greedy)")
        gen_btn = gr.Button("Generate with every model")
        gen_table = gr.Dataframe(label="Answers (one column per model)", interactive=False, wrap=True)
    with gr.Accordion("Export", open=True):
        with gr.Row():
            name = gr.Textbox("tailored-model", label="Folder name (under workspace/exports)", scale=3)
            role = gr.Dropdown(["working", "base", "student"], value="working", label="Model")
            overwrite = gr.Checkbox(False, label="Overwrite an existing folder")
        export_btn = gr.Button("Export (save, verify, card, recipe)", variant="primary")
        verification = gr.JSON(label="Export and verification", elem_id="export-verification")
        zip_file = gr.File(label="Zip download", elem_id="export-zip")
        with gr.Row():
            repo = gr.Textbox(label="Hub repository (user/name)", scale=2)
            token = gr.Textbox(label="Hub write token", type="password", scale=2)
            private = gr.Checkbox(True, label="Private")
        push_btn = gr.Button("Push to the Hub")
        push_out = gr.Markdown()
    with gr.Accordion("Stakeholder report", open=True):
        report_btn = gr.Button("Build HTML report")
        report_file = gr.File(label="Report (one self-contained HTML file)")

    @ui_errors
    def run_compare(general_v, domain_v, tokens_v, progress=gr.Progress()):
        config = compare.CompareConfig(general_source=general_v.strip() or "builtin:python-docs",
                                       domain_source=(domain_v or "").strip(),
                                       eval_tokens=number(tokens_v, 2048, int))
        job = session.submit("compare models", lambda j: compare.compare_models(
            session, config, j.progress, j.should_stop))
        frame = wait_for_job(job, progress)
        session.cache["last_comparison"] = frame
        figs = comparison_figures(frame)
        return (frame, str(compare.save_csv(session, frame)), overview_figure(frame),
                *(figs + [None] * N_CHARTS)[:N_CHARTS])

    @ui_errors
    def run_lm(tasks_v, limit_v, role_v, pubmedqa_v, progress=gr.Progress()):
        job = submit_lm_eval(session, role_v, list(tasks_v or []), number(limit_v, None, int),
                             {"pubmedqa_path": (pubmedqa_v or "").strip()})
        return wait_for_job(job, progress)

    @ui_errors
    def run_side_by_side(prompt_v, tokens_v, sample_v):
        gens = compare.side_by_side(session, prompt_v, number(tokens_v, 48, int), bool(sample_v))
        session.cache["last_generations"] = gens
        rows = ["text", "new_tokens", "seconds", "tokens_per_s", "time_to_first_token_s"]
        return pd.DataFrame({"": rows, **{g["role"]: [g[r] for r in rows] for g in gens}})

    @ui_errors
    def run_export(name_v, role_v, overwrite_v, progress=gr.Progress()):
        config = ExportConfig(name=name_v, role=role_v, overwrite=bool(overwrite_v))
        frame = session.cache.get("last_comparison")
        evaluation = frame.where(frame.notna(), None).to_dict("records") if frame is not None else None
        job = session.submit(f"export {name_v}", lambda j: export_model(
            session, config, j.progress, evaluation=evaluation))
        info = wait_for_job(job, progress)
        return info, str(zip_folder(info["folder"]))

    @ui_errors
    def run_push(name_v, repo_v, token_v, private_v):
        from studio.export import export_folder

        url = push_to_hub(export_folder(session, name_v), repo_v.strip(), token_v, bool(private_v))
        return f"Pushed to {url}"

    @ui_errors
    def run_report(general_v, domain_v, tokens_v, progress=gr.Progress()):
        frame = session.cache.get("last_comparison")
        if frame is None:
            frame = run_compare(general_v, domain_v, tokens_v, progress)[0]
        return str(report.write_report(session, frame, session.cache.get("last_generations")))

    compare_btn.click(run_compare, [general, domain, tokens],
                      [table, csv, overview, *charts], api_name="compare_models")
    lm_btn.click(run_lm, [tasks, limit, eval_role, pubmedqa], lm_out, api_name="lm_eval")
    gen_btn.click(run_side_by_side, [prompt, gen_tokens, sample], gen_table, api_name="side_by_side")
    export_btn.click(run_export, [name, role, overwrite], [verification, zip_file],
                     api_name="export_model")
    push_btn.click(run_push, [name, repo, token, private], push_out, api_name="push_to_hub")
    report_btn.click(run_report, [general, domain, tokens], report_file, api_name="stakeholder_report")
    return {"export.general": general, "export.domain": domain, "export.tokens": tokens,
            "export.table": table, "export.csv": csv, "export.tasks": tasks,
            "export.prompt": prompt, "export.generations": gen_table, "export.name": name,
            "export.role": role, "export.overwrite": overwrite, "export.verification": verification,
            "export.zip": zip_file, "export.repo": repo, "export.token": token,
            "export.report": report_file}
