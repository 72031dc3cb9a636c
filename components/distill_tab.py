"""Distillation tab: settings -> one background job; live charts read the run's metric log on disk
(so they survive a page reload and the run goes on when the browser closes); Stop and Resume."""
from __future__ import annotations

import gradio as gr

from components.common import number, ui_errors, job_progress_html, latest_job
from studio.distill import (DTYPES, TRAINABLE, DistillConfig, latest_run, run_state,
                            start_distillation)
from studio.distill_loss import KL_KINDS
from studio.figures.training import training_figures
from studio.errors import JobError
from studio.jobs import FINISHED
from studio.session import Session

D = DistillConfig()
CHARTS = ["loss", "perplexity", "lr", "grad_norm", "tokens_per_s"]


def charts_for(session: Session, run_name: str | None = None) -> tuple[str | None, dict, dict | None]:
    """(run name, {chart: figure}, summary) of a run read from disk (latest run when None)."""
    state = run_state(session, run_name or None)
    return state["run"], training_figures(state["rows"]), state["summary"]


def distill_job(session: Session, job_id: str = ""):
    return latest_job(session, job_id, "distill ")


def progress_html(job) -> str:
    return job_progress_html(job, "No distillation job in this session yet.")


def create_tab(session: Session) -> dict:
    gr.Markdown("The teacher (the loaded base model) teaches the student (the pruned model; a copy "
                "of the base when there is none). Loss = α·CE + β·T²·KL + γ·(1 − cos).")
    with gr.Row():
        data = gr.Textbox(D.data, label="Training data", scale=3,
                          info="builtin:python-docs, a .txt/.jsonl/.csv file, hf:NAME, pubmedqa:PATH")
        eval_source = gr.Textbox("", label="Held-out data", scale=3,
                                 info="empty = a slice of the training data")
        run_name = gr.Textbox("", label="Run name", placeholder="automatic", scale=2)
    with gr.Row():
        steps = gr.Number(D.steps, label="Steps", precision=0)
        batch = gr.Number(D.batch, label="Batch", precision=0)
        block = gr.Number(D.block, label="Block (tokens)", precision=0)
        lr = gr.Number(D.lr, label="Learning rate")
        eval_every = gr.Number(D.eval_every, label="Eval every K steps", precision=0)
        eval_tokens = gr.Number(D.eval_tokens, label="Eval tokens", precision=0)
    with gr.Row():
        alpha = gr.Number(D.alpha, label="α (CE)")
        beta = gr.Number(D.beta, label="β (KL)")
        gamma = gr.Number(D.gamma, label="γ (hidden cos)")
        temperature = gr.Number(D.temperature, label="Temperature")
        kl = gr.Dropdown(list(KL_KINDS), value=D.kl, label="KL")
        student_dtype = gr.Dropdown(list(DTYPES), value=D.student_dtype, label="Student dtype")
        correction = gr.Number(0, label="Teacher correction steps", precision=0)
    with gr.Row():
        trainable = gr.Dropdown(list(TRAINABLE), value=D.trainable, label="Trainable",
                                info="mlp: only the GLU projections learn")
        teacher_data = gr.Slider(0, 1, value=D.teacher_data, step=0.05, label="Teacher-written share",
                                 info="self-data: the teacher rewrites this share of the training "
                                      "blocks after a short prompt (wider recovery; costs sampling time)")
        prompt_tokens = gr.Number(D.prompt_tokens, label="Prompt tokens", precision=0)
    with gr.Row():
        start = gr.Button("Start distillation", variant="primary")
        stop = gr.Button("Stop", variant="stop", elem_id="distill-stop")
        resume = gr.Button("Resume")
        job_id = gr.Textbox("", label="Job id", placeholder="latest distillation job",
                            elem_id="distill-job-id")
    progress = gr.HTML(progress_html(None), elem_id="distill-progress")
    with gr.Row():
        loss_plot = gr.Plot(label="Loss", elem_id="distill-loss-plot")
        ppl_plot = gr.Plot(label="Held-out perplexity")
    with gr.Row():
        lr_plot, grad_plot, speed_plot = gr.Plot(label="LR"), gr.Plot(label="Grad norm"), gr.Plot(label="Tokens/s")
    summary = gr.JSON(label="Result")
    timer = gr.Timer(2.0)
    plots = [loss_plot, ppl_plot, lr_plot, grad_plot, speed_plot]
    settings = [data, eval_source, run_name, steps, batch, block, lr, eval_every, eval_tokens, alpha,
                beta, gamma, temperature, kl, student_dtype, correction, trainable, teacher_data,
                prompt_tokens]

    def to_config(data_v, eval_v, run_v, steps_v, batch_v, block_v, lr_v, every_v, tokens_v, alpha_v,
                  beta_v, gamma_v, temp_v, kl_v, dtype_v, correction_v,
                  trainable_v=D.trainable, teacher_data_v=D.teacher_data,
                  prompt_v=D.prompt_tokens) -> DistillConfig:
        return DistillConfig(
            data=data_v or D.data, eval_source=eval_v or None, run_name=(run_v or "").strip(),
            steps=number(steps_v, D.steps, int), batch=number(batch_v, D.batch, int),
            block=number(block_v, D.block, int), lr=number(lr_v, D.lr),
            eval_every=number(every_v, D.eval_every, int), eval_tokens=number(tokens_v, D.eval_tokens, int),
            alpha=number(alpha_v, D.alpha), beta=number(beta_v, D.beta), gamma=number(gamma_v, D.gamma),
            temperature=number(temp_v, D.temperature), kl=kl_v or D.kl,
            student_dtype=dtype_v or D.student_dtype,
            teacher_correction_steps=number(correction_v, 0, int),
            trainable=trainable_v or D.trainable,
            teacher_data=number(teacher_data_v, D.teacher_data),
            prompt_tokens=number(prompt_v, D.prompt_tokens, int))

    @ui_errors
    def start_run(data, eval_source, run_name, steps, batch, block, lr, eval_every, eval_tokens, alpha,
                  beta, gamma, temperature, kl, student_dtype, teacher_correction,
                  trainable=D.trainable, teacher_data=D.teacher_data, prompt_tokens=D.prompt_tokens):
        config = to_config(data, eval_source, run_name, steps, batch, block, lr, eval_every,
                           eval_tokens, alpha, beta, gamma, temperature, kl, student_dtype,
                           teacher_correction, trainable, teacher_data, prompt_tokens)
        return start_distillation(session, config).id

    @ui_errors
    def resume_run(run_name: str = ""):
        config = DistillConfig(run_name=(run_name or "").strip() or (latest_run(session) or ""))
        return start_distillation(session, config, resume=True).id

    @ui_errors
    def stop_run(job_id_value: str = ""):
        job = distill_job(session, job_id_value)
        if job is not None and job.status not in FINISHED:
            session.jobs.stop(job.id)
        return progress_html(job)

    def refresh(job_id_value, run_value):
        try:
            job = distill_job(session, job_id_value)
        except JobError:  # a stale id typed in the box: show the latest run instead
            job = distill_job(session)
        name = job.name.split(" ", 1)[1] if job is not None else (run_value or None)
        run, figures, result = charts_for(session, name)
        return (progress_html(job), *[figures[c] for c in CHARTS],
                result or {"run": run, "status": job.status if job else "no run yet"})

    start.click(start_run, settings, job_id, api_name="start_distillation")
    resume.click(resume_run, run_name, job_id, api_name="resume_distillation")
    stop.click(stop_run, job_id, progress, api_visibility="private")
    timer.tick(refresh, [job_id, run_name], [progress, *plots, summary], api_visibility="private",
               show_progress="hidden")
    return {"distill.data": data, "distill.eval": eval_source, "distill.run_name": run_name,
            "distill.steps": steps, "distill.batch": batch, "distill.block": block, "distill.lr": lr,
            "distill.alpha": alpha, "distill.beta": beta, "distill.gamma": gamma,
            "distill.temperature": temperature, "distill.kl": kl,
            "distill.teacher_data": teacher_data, "distill.job_id": job_id,
            "distill.start": start, "distill.stop": stop, "distill.resume": resume,
            "distill.summary": summary, "distill.refresh": refresh}
