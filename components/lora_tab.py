"""LoRA tab: settings -> one background job on the working model; live loss / held-out perplexity
from the job's metric log; then before/after side by side; save the adapter or merge it."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from components.common import number, ui_errors, job_progress_html, latest_job
from studio.errors import JobError
from studio.figures import metrics_figure
from studio.figures.training import loss_figure
from studio.jobs import FINISHED
from studio.lora import LORA, LoraConfig, merge_adapter, qlora_available, save_adapter, start_lora, target_choices
from studio.lora_data import PRESET_TEMPLATES
from studio.monitor import read_metrics
from studio.session import Session

D = LoraConfig(data="")
PUBMEDQA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pubmedqa" / "ori_pqal.json"
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_job(session: Session, job_id: str = ""):
    return latest_job(session, job_id, "lora ")


def status_html(job) -> str:
    return job_progress_html(job, "No LoRA job in this session yet.")


def comparison(result: dict | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics before/after, answers before/after) of a finished run."""
    if not result:
        return pd.DataFrame(columns=["metric", "before", "after"]), pd.DataFrame(columns=["prompt", "before", "after"])
    before, after = result["before"], result["after"]
    rows = [["held-out perplexity", before.get("eval_ppl"), after.get("eval_ppl")]]
    if "pubmedqa" in after:
        b, a = before["pubmedqa"], after["pubmedqa"]
        rows += [[f"PubMedQA accuracy ({a['n']} test questions)", b["accuracy"], a["accuracy"]],
                 ["majority baseline (55.2% on all 500)", b["majority_baseline"], a["majority_baseline"]]]
    rows.append(["trainable fraction", None, result["trainable_fraction"]])
    answers = [[p, b, a] for p, b, a in zip(result["prompts"], before["answers"], after["answers"])]
    return (pd.DataFrame(rows, columns=["metric", "before", "after"]),
            pd.DataFrame(answers, columns=["prompt", "before", "after"]))


def create_tab(session: Session) -> dict:
    gr.Markdown("Train a LoRA (or DoRA) adapter on the working model (the student, else the base) "
                "with your domain data; compare before/after, then save the adapter or merge it.")
    choices = target_choices(session.working().adapter) if session.models else DEFAULT_TARGETS
    qlora_ok, qlora_reason = qlora_available()
    with gr.Row():
        data = gr.Textbox(f"pubmedqa:{PUBMEDQA}:train", label="Training data", scale=3,
                          info="text spec, .jsonl/.json/.csv/.parquet, hf:NAME or pubmedqa:PATH:train")
        eval_data = gr.Textbox(f"pubmedqa:{PUBMEDQA}:test", label="Held-out data", scale=3)
        fmt = gr.Radio(["instruction", "text"], value="instruction", label="Format", scale=1)
    with gr.Row():
        template = gr.Dropdown(["", *PRESET_TEMPLATES], value="pubmedqa", allow_custom_value=True,
                               label="Prompt template", info="preset, or '{field} ...' over fields")
        prompt_field = gr.Textbox(D.prompt_field, label="Prompt field")
        response_field = gr.Textbox(D.response_field, label="Response field")
        response_template = gr.Textbox("", label="Response template", placeholder="{field} ...")
    targets = gr.CheckboxGroup(choices, value=choices, label="Target modules")
    with gr.Row():
        rank = gr.Number(D.rank, label="Rank", precision=0)
        alpha = gr.Number(D.alpha, label="Alpha")
        dropout = gr.Number(D.dropout, label="Dropout")
        lr = gr.Number(D.lr, label="Learning rate")
        steps = gr.Number(D.steps, label="Steps", precision=0)
        block = gr.Number(384, label="Block (tokens)", precision=0)
        batch = gr.Number(2, label="Batch", precision=0)
    with gr.Row():
        eval_examples = gr.Number(D.eval_examples, label="Held-out examples", precision=0)
        task_examples = gr.Number(50, label="PubMedQA questions", precision=0)
        dora = gr.Checkbox(False, label="DoRA")
        qlora = gr.Checkbox(False, label="QLoRA (4-bit base)", interactive=qlora_ok, info=qlora_reason)
        resume = gr.Checkbox(False, label="Resume from checkpoint")
        run_name = gr.Textbox(D.run_name, label="Run name")
    prompts = gr.Textbox("", label="Prompts to compare (one per line; empty = first held-out ones)", lines=2)
    with gr.Row():
        start = gr.Button("Start LoRA", variant="primary")
        stop = gr.Button("Stop", variant="stop")
        job_id = gr.Textbox("", label="Job id", placeholder="latest LoRA job")
    status = gr.HTML(status_html(None))
    with gr.Row():
        loss_plot, ppl_plot = gr.Plot(label="Loss"), gr.Plot(label="Held-out perplexity")
    metrics = gr.Dataframe(label="Before / after", interactive=False)
    answers = gr.Dataframe(label="Same prompts, greedy", interactive=False, wrap=True)
    with gr.Row():
        adapter_name = gr.Textbox("lora", label="Adapter name")
        save_btn = gr.Button("Save adapter")
        merge_btn = gr.Button("Merge into student")
    saved = gr.JSON(label="Saved / merged")
    timer = gr.Timer(2.0)
    inputs = [data, fmt, prompt_field, response_field, template, response_template, eval_data, targets,
              rank, alpha, dropout, lr, steps, block, batch, dora, qlora, eval_examples, task_examples,
              prompts, resume, run_name]

    @ui_errors
    def start_run(data, fmt, prompt_field, response_field, template, response_template, eval_data,
                  targets, rank, alpha, dropout, lr, steps, block, batch, dora, qlora, eval_examples,
                  task_examples, prompts, resume, run_name):
        config = LoraConfig(
            data=data, format=fmt or "instruction", prompt_field=prompt_field or D.prompt_field,
            response_field=response_field or D.response_field, template=template or "",
            response_template=response_template or "", eval_data=eval_data or "",
            targets=list(targets or []), rank=number(rank, D.rank, int), alpha=number(alpha, D.alpha),
            dropout=number(dropout, D.dropout), lr=number(lr, D.lr), steps=number(steps, D.steps, int),
            block_len=number(block, 384, int), batch_size=number(batch, 2, int), dora=bool(dora),
            qlora=bool(qlora), eval_examples=number(eval_examples, D.eval_examples, int),
            task_examples=number(task_examples, 0, int),
            prompts=[p.strip() for p in (prompts or "").splitlines() if p.strip()],
            resume=bool(resume), run_name=(run_name or "lora").strip())
        return start_lora(session, config).id

    @ui_errors
    def stop_run(job_id_value: str = ""):
        job = lora_job(session, job_id_value)
        if job is not None and job.status not in FINISHED:
            session.jobs.stop(job.id)
        return status_html(job)

    def refresh(job_id_value):
        try:
            job = lora_job(session, job_id_value)
        except JobError:
            job = lora_job(session)
        rows = read_metrics(job.folder / "metrics.jsonl") if job is not None else []
        table, answer_rows = comparison(job.result if job is not None and job.status == "done" else None)
        return (status_html(job), loss_figure(rows, ["loss"]),
                metrics_figure(rows, ["eval_ppl"], "Held-out perplexity"), table, answer_rows)

    @ui_errors
    def save(name):
        return {"adapter_dir": str(save_adapter(session, (name or "lora").strip()))}

    @ui_errors
    def merge():
        if not session.has(LORA):
            raise JobError("No trained adapter waiting; run LoRA training first.")
        return merge_adapter(session)

    start.click(start_run, inputs, job_id, api_name="start_lora")
    stop.click(stop_run, job_id, status, api_visibility="private")
    save_btn.click(save, adapter_name, saved, api_name="save_lora_adapter")
    merge_btn.click(merge, None, saved, api_name="merge_lora")
    timer.tick(refresh, job_id, [status, loss_plot, ppl_plot, metrics, answers],
               api_visibility="private", show_progress="hidden")
    return {"lora.data": data, "lora.eval": eval_data, "lora.format": fmt, "lora.template": template,
            "lora.targets": targets, "lora.rank": rank, "lora.alpha": alpha, "lora.lr": lr,
            "lora.steps": steps, "lora.block": block, "lora.batch": batch, "lora.dora": dora,
            "lora.qlora": qlora, "lora.start": start, "lora.stop": stop, "lora.job_id": job_id,
            "lora.metrics": metrics, "lora.answers": answers, "lora.refresh": refresh}
