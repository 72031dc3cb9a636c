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
