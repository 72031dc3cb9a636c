"""What every tab shares: turning engine errors into one-sentence UI errors, waiting on jobs."""
from __future__ import annotations

import functools
import logging
import time

import gradio as gr

from studio.errors import StudioError
from studio.jobs import DONE, FAILED, FINISHED, STOPPED, Job

log = logging.getLogger(__name__)


def ui_errors(fn):
    """Show a StudioError as its one-sentence message; anything else as a short internal error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"Internal error ({type(exc).__name__}: {str(exc)[:200]}); the session "
                           "is still usable, see the terminal log.", print_exception=False) from None

    return wrapper


def wait_for_job(job: Job, progress: gr.Progress | None = None, poll: float = 0.25):
    """Block until the job ends, mirroring its progress into the Gradio progress bar."""
    while job.status not in FINISHED:
        if progress is not None:
            progress(job.fraction, desc=job.message)
        time.sleep(poll)
    if job.status == FAILED:
        raise StudioError(job.error or f"Job {job.name} failed.")
    if job.status == STOPPED:
        raise StudioError(f"Job {job.name} was stopped before it finished.")
    assert job.status == DONE
    return job.result


def number(value, default=None, cast=float):
    """Gradio sends None for an emptied number box; fall back to the default."""
    return default if value is None or value == "" else cast(value)


def latest_job(session, job_id: str = "", prefix: str = ""):
    """The job named in the box, else the newest job whose name starts with prefix (or None)."""
    if job_id:
        return session.jobs.get(job_id.strip())
    jobs = [j for j in session.jobs.jobs.values() if j.name.startswith(prefix)]
    return jobs[-1] if jobs else None


def job_progress_html(job, nothing_yet: str) -> str:
    """A progress bar with status, elapsed time, ETA, message and any error of one job."""
    if job is None:
        return f"<i>{nothing_yet}</i>"
    info = job.to_dict()
    eta = f" · ETA {info['eta_s']:.0f}s" if info["eta_s"] is not None else ""
    error = f" · {info['error']}" if info["error"] else ""
    return (f"<div><progress value='{info['progress']:.4f}' max='1' style='width:100%'></progress>"
            f"<br><b>{job.name}</b> ({job.id}): {info['status']} · {info['progress'] * 100:.0f}%"
            f" · {info['elapsed_s']:.0f}s elapsed{eta} · {info['message']}{error}</div>")
