"""Jobs: long work with progress, a stop request honoured at safe points, one log and a result.

Heavy jobs run one at a time per device, strictly in submission order (one worker per device takes
them from a FIFO); a failed job records why and leaves the queue (and the session) usable. A queued
job that is stopped ends at once, without running.
"""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import traceback
from collections import deque
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
    _queue: "JobQueue | None" = field(default=None, repr=False)

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
        if self._queue is not None:  # still waiting in the queue: it ends now, without running
            self._queue._cancel_if_queued(self)

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
    """Heavy jobs: one FIFO and one worker thread per device (the worker exits when its FIFO is
    empty and the next submit starts a new one), so they run one at a time in submission order.
    Light jobs start at once on their own thread."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.jobs: dict[str, Job] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()  # guards jobs, the FIFOs, the workers and QUEUED → RUNNING
        self._pending: dict[str, deque[Job]] = {}
        self._workers: dict[str, threading.Thread] = {}

    def submit(self, name: str, fn: Callable[[Job], Any], device: str = "cpu",
               heavy: bool = True) -> Job:
        with self._lock:
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._counter):03d}"
            folder = self.root / f"{job_id}-{_slug(name)}"
            folder.mkdir(parents=True, exist_ok=True)
            job = Job(id=job_id, name=name, device=device, folder=folder, fn=fn, heavy=heavy,
                      _queue=self)
            job.log(f"queued {name} on {device}")
            self.jobs[job_id] = job
            if heavy:
                self._pending.setdefault(device, deque()).append(job)
                if device not in self._workers:
                    worker = threading.Thread(target=self._worker, args=(device,), daemon=True,
                                              name=f"jobs-{device}")
                    self._workers[device] = worker
                    worker.start()
        if not heavy:
            threading.Thread(target=self._run, args=(job,), daemon=True, name=f"job-{job_id}").start()
        return job

    def _worker(self, device: str) -> None:
        """Runs the device's heavy jobs in order; leaves when none is left (under the lock, so a
        job submitted meanwhile either is taken here or starts a new worker)."""
        while True:
            with self._lock:
                pending = self._pending.get(device)
                if not pending:
                    self._workers.pop(device, None)
                    return
                job = pending.popleft()
            self._run(job)

    def _cancel_if_queued(self, job: Job) -> None:
        with self._lock:
            if job.status != QUEUED:
                return
            job.status, job.message = STOPPED, "stopped before it started"
            pending = self._pending.get(job.device)
            if pending and job in pending:
                pending.remove(job)
        self._finish(job)

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.status != QUEUED:  # stopped while it waited: already finished
                return
            job.status = RUNNING
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
        except BaseException as exc:  # e.g. SystemExit inside a job: the worker must go on
            job.status, job.error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            self._finish(job)

    @staticmethod
    def _finish(job: Job) -> None:
        job.finished = time.time()
        if job.status == FAILED:
            job.message = f"failed: {job.error}"
        try:
            job.log(job.message)
            _write_result(job)
        except OSError as exc:  # e.g. the workspace vanished; the queue must go on
            log.warning("could not record job %s: %s", job.id, exc)
        job._done.set()

    def queued(self, device: str | None = None) -> list[Job]:
        """Heavy jobs waiting to start, in the order they will run."""
        with self._lock:
            return [j for d, pending in self._pending.items() if device in (None, d)
                    for j in pending if j.status == QUEUED]

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise JobError(f"No job with id '{job_id}'; pick one from the job list.")
        return self.jobs[job_id]

    def stop(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status not in FINISHED:
            job.log("stop requested")
        job.request_stop()
        return job

    def active(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.status not in FINISHED]

    def listing(self, limit: int = 20) -> list[dict]:
        """The latest jobs; a queued one says its place in its device's queue (1 = next)."""
        places = {}
        for device in list(self._pending):
            for n, job in enumerate(self.queued(device), 1):
                places[job.id] = n
        rows = []
        for job in list(self.jobs.values())[-limit:]:
            row = job.to_dict()
            if job.id in places:
                row["queue_position"] = places[job.id]
                row["message"] = f"queued ({places[job.id]} in line)"
            rows.append(row)
        return rows


def _write_result(job: Job) -> None:
    payload = {**job.to_dict(), "result": job.result}
    try:
        text = json.dumps(payload, indent=2, default=str)
    except (TypeError, ValueError):
        text = json.dumps({**job.to_dict(), "result": repr(job.result)}, indent=2)
    (job.folder / "result.json").write_text(text, encoding="utf-8")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40] or "job"
