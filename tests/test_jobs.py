"""Jobs: progress, stop at a safe point, failures that leave the session usable, order."""
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
    running, order = [], []

    def work(name):
        def fn(job):
            running.append(name)
            assert len(running) == 1, "two heavy jobs ran at once"
            order.append(name)
            time.sleep(0.05)
            running.remove(name)
        return fn

    jobs = []
    for n in "abcd":
        jobs.append(session.submit(n, work(n)))
        time.sleep(0.01)
    for job in jobs:
        job.wait(10)
        assert job.status == DONE
    assert order == list("abcd")


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
