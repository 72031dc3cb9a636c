"""Jobs: progress, stop at a safe point, failures that leave the session usable, order."""
import threading
import time

import pytest

from studio.errors import StudioError
from studio.jobs import DONE, FAILED, STOPPED
from studio.session import Session


@pytest.fixture
def session(tmp_path):
    return Session(tmp_path / "ws", device="cpu")


def test_progress_result_and_log(session):
    def work(job):
        for i in range(5):
            job.progress((i + 1) / 5, f"step {i + 1}")
        return {"answer": 42}

    job = session.submit("count", work).wait(10)
    assert job.status == DONE and job.result == {"answer": 42} and job.fraction == 1.0
    assert "step 5" in job.log_tail()
    assert (job.folder / "result.json").is_file()
    assert session.workspace in job.folder.parents  # everything under the workspace


def test_stop_is_honoured_at_a_safe_point(session):
    steps = []

    def work(job):
        for i in range(1000):
            job.check_stop()
            steps.append(i)
            job.progress(i / 1000, f"step {i}")
            time.sleep(0.01)

    job = session.submit("long", work)
    time.sleep(0.2)
    session.jobs.stop(job.id)
    job.wait(10)
    assert job.status == STOPPED and 0 < len(steps) < 1000


def test_failure_is_reported_and_session_stays_usable(session):
    def crash(job):
        raise RuntimeError("injected crash")

    def bad_input(job):
        raise StudioError("The budget must be positive; pick at least one block.")

    crashed = session.submit("crash", crash).wait(10)
    assert crashed.status == FAILED and "injected crash" in crashed.error
    assert "Traceback" in crashed.log_tail(50)  # full trace in the job log, not the message
    told = session.submit("bad", bad_input).wait(10)
    assert told.error == "The budget must be positive; pick at least one block."
    assert session.submit("after", lambda job: "fine").wait(10).result == "fine"


def test_heavy_jobs_on_one_device_run_one_at_a_time_in_order(session):
    """Ten heavy jobs submitted back to back (no sleeps): strictly FIFO, never overlapping, and a
    failing one in the middle does not stall the rest."""
    gate, entered, lock, running, spans = (threading.Event(), threading.Event(), threading.Lock(),
                                           [], [])

    def work(n):
        def fn(job):
            entered.set()
            gate.wait(10)  # every submit happens while the first job holds the device
            with lock:
                running.append(n)
                overlap = len(running) > 1
            started = time.perf_counter()
            time.sleep(0.005)
            with lock:
                running.remove(n)
            spans.append((n, started, time.perf_counter(), overlap))
            if n == 4:
                raise RuntimeError("injected crash in the middle")
            return n
        return fn

    jobs = [session.submit(f"job {n}", work(n)) for n in range(10)]
    assert entered.wait(10) and jobs[0].status == "running"
    status = {row["id"]: row for row in session.jobs.listing()}
    waiting = [status[j.id] for j in jobs[1:]]
    assert all(row["status"] == "queued" for row in waiting)
    assert [row["queue_position"] for row in waiting] == list(range(1, 10))
    assert [j.id for j in session.jobs.queued()] == [j.id for j in jobs[1:]]
    gate.set()
    for job in jobs:
        job.wait(30)
    assert [n for n, *_ in spans] == list(range(10))  # submission order
    assert not any(overlap for *_, overlap in spans)
    assert all(a[2] <= b[1] for a, b in zip(spans, spans[1:]))  # each ends before the next starts
    assert [j.status for j in jobs] == [DONE] * 4 + [FAILED] + [DONE] * 5
    assert [j.result for j in jobs if j.status == DONE] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert not session.jobs.queued() and not session.jobs.active()


def test_a_queued_job_stops_at_once_without_running(session):
    gate, ran = threading.Event(), []
    entered = threading.Event()
    first = session.submit("first", lambda job: entered.set() or gate.wait(10))
    second = session.submit("second", lambda job: ran.append("second"))
    third = session.submit("third", lambda job: ran.append("third"))
    assert entered.wait(10)
    session.jobs.stop(second.id)
    assert second.wait(1).status == STOPPED and second.message == "stopped before it started"
    assert (second.folder / "result.json").is_file() and not second.started
    assert first.status == "running" and [j.id for j in session.jobs.queued()] == [third.id]
    third.request_stop()  # the Job's own stop also ends a queued job at once
    assert third.wait(1).status == STOPPED
    gate.set()
    assert first.wait(10).status == DONE
    assert session.submit("after", lambda job: "fine").wait(10).result == "fine"
    assert ran == []


def test_light_jobs_do_not_wait_for_heavy_ones(session):
    gate, entered = threading.Event(), threading.Event()
    heavy = session.submit("heavy", lambda job: entered.set() or gate.wait(10))
    assert entered.wait(10)
    light = session.submit("light", lambda job: "quick", heavy=False)
    assert light.wait(5).result == "quick" and heavy.status == "running"
    gate.set()
    heavy.wait(10)


def test_unknown_job_and_bad_workspace_names(session):
    with pytest.raises(StudioError, match="No job"):
        session.jobs.get("nope")
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(StudioError):
            session.path(bad)


def test_unwritable_workspace(tmp_path):
    import os

    if os.geteuid() == 0:
        target = "/proc/tailor-studio-ws"  # not writable even for root
    else:
        target = str(tmp_path / "ro" / "ws")
        (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(StudioError, match="not writable"):
        Session(target)


def test_unload_frees_the_model(tiny_session):
    import gc
    import weakref

    session = tiny_session("llama")
    ref = weakref.ref(session.get().model)
    session.unload("base")
    gc.collect()
    assert ref() is None and not session.has("base")
    with pytest.raises(StudioError, match="load a model first"):
        session.get()


def test_memory_guard_refuses_before_running_out(tmp_path, tiny_dir):
    """Out-of-memory simulated on CPU: a budget smaller than two copies of the model."""
    session = Session(tmp_path / "ws", device="cpu", memory_limit_bytes=30 << 20)
    session.load(str(tiny_dir("llama")))  # ~26 MiB (tiny layers, real 49k vocabulary)
    with pytest.raises(StudioError, match="Out of memory"):
        session.copy_of("base")
    assert session.has("base")  # nothing lost, the session stays usable
    assert session.submit("after", lambda job: "fine").wait(10).result == "fine"
