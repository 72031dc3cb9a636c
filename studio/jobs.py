"""Jobs: long work with progress, a stop request honoured at safe points, one log and a result.

Heavy jobs run one at a time per device, in submission order; a failed job records why and
leaves the queue (and the session) usable.
"""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from studio.errors import JobError, StudioError

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, STOPPED = "queued", "running", "done", "failed", "stopped"
FINISHED = (DONE, FAILED, STOPPED)


class JobStopped(Exception):
    """Raised at a safe point after a stop was requested; the job ends as 'stopped'."""


@dataclass
class Job:
    id: str
    name: str
    device: str
    folder: Path
    fn: Callable[["Job"], Any] = field(repr=False)
    heavy: bool = True
    status: str = QUEUED
    fraction: float = 0.0
    message: str = "queued"
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    # -- called from inside the job --------------------------------------------------------
    def progress(self, fraction: float, message: str = "") -> None:
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if message and message != self.message:
            self.message = message
            self.log(message)

    def log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with open(self.folder / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {line}\n")

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def check_stop(self) -> None:
        if self._stop.is_set():
            raise JobStopped()

    # -- called from outside ---------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> "Job":
        if not self._done.wait(timeout):
            raise JobError(f"Job {self.id} ({self.name}) is still {self.status} after {timeout}s.")
        return self

    def eta_seconds(self) -> float | None:
        if self.status != RUNNING or not self.started or self.fraction <= 0.01:
            return None
        elapsed = time.time() - self.started
        return elapsed * (1 - self.fraction) / self.fraction

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / "log.txt"
        if not path.exists():
            return ""
        return "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[-lines:])

    def to_dict(self) -> dict:
        eta = self.eta_seconds()
        return {"id": self.id, "name": self.name, "device": self.device, "status": self.status,
                "progress": round(self.fraction, 4), "message": self.message, "error": self.error,
                "eta_s": None if eta is None else round(eta, 1),
                "elapsed_s": round((self.finished or time.time()) - self.started, 1) if self.started else 0.0,
                "folder": str(self.folder)}


class JobQueue:
    """One worker thread per device runs heavy jobs in order; light jobs start at once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.jobs: dict[str, Job] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._device_locks: dict[str, threading.Lock] = {}

    def submit(self, name: str, fn: Callable[[Job], Any], device: str = "cpu",
               heavy: bool = True) -> Job:
        with self._lock:
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._counter):03d}"
            folder = self.root / f"{job_id}-{_slug(name)}"
            folder.mkdir(parents=True, exist_ok=True)
            job = Job(id=job_id, name=name, device=device, folder=folder, fn=fn, heavy=heavy)
            self.jobs[job_id] = job
            lock = self._device_locks.setdefault(device, threading.Lock())
        job.log(f"queued {name} on {device}")
        threading.Thread(target=self._run, args=(job, lock if heavy else None), daemon=True,
                         name=f"job-{job_id}").start()
        return job

    def _run(self, job: Job, lock: threading.Lock | None) -> None:
        if lock is not None:
            lock.acquire()  # FIFO enough for a handful of jobs; Python locks are not strictly fair
        try:
            if job.should_stop():
                job.status, job.message = STOPPED, "stopped before it started"
                return
            job.status, job.started = RUNNING, time.time()
            job.log(f"started {job.name}")
            job.result = job.fn(job)
            job.status, job.fraction = DONE, 1.0
            job.message = "done"
        except JobStopped:
            job.status, job.message = STOPPED, "stopped"
        except StudioError as exc:
            job.status, job.error = FAILED, str(exc)
        except Exception as exc:  # a crash inside a job must not take the session down
            job.status, job.error = FAILED, f"{type(exc).__name__}: {exc}"
            job.log(traceback.format_exc())
        finally:
            job.finished = time.time()
            if job.status == FAILED:
                job.message = f"failed: {job.error}"
            job.log(job.message)
            _write_result(job)
            if lock is not None:
                lock.release()
            job._done.set()

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise JobError(f"No job with id '{job_id}'; pick one from the job list.")
        return self.jobs[job_id]

    def stop(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.request_stop()
        job.log("stop requested")
        return job

    def active(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.status not in FINISHED]

    def listing(self, limit: int = 20) -> list[dict]:
        return [j.to_dict() for j in list(self.jobs.values())[-limit:]]


def _write_result(job: Job) -> None:
    payload = {**job.to_dict(), "result": job.result}
    try:
        text = json.dumps(payload, indent=2, default=str)
    except (TypeError, ValueError):
        text = json.dumps({**job.to_dict(), "result": repr(job.result)}, indent=2)
    (job.folder / "result.json").write_text(text, encoding="utf-8")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40] or "job"
