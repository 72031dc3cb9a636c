"""The always-visible session panel: devices, memory, models, jobs with progress and Stop."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from components.common import ui_errors
from studio.session import Session

# the side panel is narrow: two columns, the job (name, then the id to stop it by) and its state
JOB_COLUMNS = ["job", "state"]

def devices_markdown(status: dict) -> str:
    lines = ["**Devices**"]
    for d in status["devices"]:
        lines.append(f"- `{d['device']}` {d['name']}: {d['used_mib']:,} / {d['total_mib']:,} MiB used")
    lines.append("**Models**")
    if not status["models"]:
        lines.append("- none loaded")
    for role, m in status["models"].items():
        lines.append(f"- **{role}**: {m['params'] / 1e6:.1f}M params, {m['memory_mib']} MiB, "
                     f"{m['dtype']} on {m['device']}")
    return "\n".join(lines)


def jobs_frame(status: dict) -> pd.DataFrame:
    rows = []
    for j in reversed(status["jobs"]):
        state = j["status"]
        if state in ("running", "queued"):
            state += f" {j['progress'] * 100:.0f}%" + (f", ETA {j['eta_s']:.0f} s" if j.get("eta_s") else "")
        if j.get("message") and j["message"] != j["status"]:
            state += f": {j['message']}"
        rows.append({"job": f"{j['name']} ({j['id']})", "state": state})
    return pd.DataFrame(rows, columns=JOB_COLUMNS)

def create_panel(session: Session) -> dict:
    gr.Markdown("### Session")
    overview = gr.Markdown()
    jobs = gr.Dataframe(headers=JOB_COLUMNS, label="Jobs", interactive=False, wrap=True,
                        column_widths=["50%", "50%"])
    with gr.Row():
        job_id = gr.Textbox(label="Job id", placeholder="latest running job", scale=3)
        stop = gr.Button("Stop", variant="stop", scale=1)
    job_info = gr.JSON(label="Job", visible=True)
    timer = gr.Timer(2.0)

    def refresh():
        status = session.status()
        return devices_markdown(status), jobs_frame(status)

    @ui_errors
    def session_status():
        return session.status()

    @ui_errors
    def job_status(job_id_value: str = ""):
        job = _pick_job(session, job_id_value)
        return {**job.to_dict(), "result": _jsonable(job.result), "log_tail": job.log_tail(10)}

    @ui_errors
    def stop_job(job_id_value: str = ""):
        job = session.jobs.stop(_pick_job(session, job_id_value).id)
        return job.to_dict()

    timer.tick(refresh, None, [overview, jobs], api_visibility="private", show_progress="hidden")
    hidden = gr.JSON(visible=False)
    status_btn = gr.Button("Status", size="sm", visible=False)
    status_btn.click(session_status, None, hidden, api_name="session_status")
    job_status_btn = gr.Button("Job status", size="sm", visible=False)
    job_status_btn.click(job_status, job_id, job_info, api_name="job_status")
    stop.click(stop_job, job_id, job_info, api_name="stop_job")
    return {"panel.overview": overview, "panel.jobs": jobs, "panel.job_id": job_id,
            "panel.stop": stop, "panel.refresh": refresh}


def _pick_job(session: Session, job_id: str):
    from studio.errors import JobError

    if job_id:
        return session.jobs.get(job_id.strip())
    active = session.jobs.active()
    if active:
        return active[-1]
    if session.jobs.jobs:
        return list(session.jobs.jobs.values())[-1]
    raise JobError("There are no jobs yet; start one from a tab.")


def _jsonable(value):
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:2000]
