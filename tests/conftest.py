"""Shared fixtures: models are loaded once per test run; tiny models of every family are built
once; one real studio server (subprocess) serves every gradio_client test."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
WIKI_TEST = DATA / "wikitext-2" / "test.txt"
WIKI_VALID = DATA / "wikitext-2" / "valid.txt"
PUBMEDQA = DATA / "pubmedqa" / "ori_pqal.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, os.cpu_count() or 1))

from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()


def need_data(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present (shared data beside the repo)")
    return path


def wait_until(predicate, timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def run_torchrun(args: list[str], timeout: float, nproc: int = 2) -> tuple[int, str, str]:
    """`torchrun --standalone --nproc_per_node N -m studio ARGS` from the repo root, one OpenMP
    thread per process; (return code, stdout, stderr). A hung rendezvous ends the whole process
    group, workers included."""
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", str(nproc), "-m",
                             "studio", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "STUDIO_QUIET": "1", "OMP_NUM_THREADS": "1"},
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="session")
def default_model():
    """The embedded SmolLM2-135M-Instruct, loaded once (float32 on CPU)."""
    from studio.models.loading import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(default_model):
    return default_model.tokenizer


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """tiny_dir(family) -> folder of a tiny random checkpoint of that family (built once)."""
    from studio.models.tiny import build_tiny

    built: dict[str, Path] = {}

    def make(family: str = "llama") -> Path:
        if family not in built:
            built[family] = build_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"), tokenizer)
        return built[family]

    return make


@pytest.fixture
def tiny_session(tmp_path, tiny_dir):
    """tiny_session(family) -> a Session in a temporary workspace with that tiny model as base."""
    from studio.session import Session

    def make(family: str = "llama"):
        session = Session(tmp_path / "workspace", device="cpu")
        session.load(str(tiny_dir(family)))
        return session

    return make


def start_studio(workspace: Path, *extra: str, timeout: float = 240.0):
    """Start launch.py in a subprocess; return (process, url) once it answers HTTP."""
    import launch

    proc, url, _ = launch.spawn(workspace, *extra, timeout=timeout)
    return proc, url


@pytest.fixture(scope="session")
def studio_server(tmp_path_factory):
    """One real studio (default model preloaded) for every gradio_client and browser test."""
    workspace = tmp_path_factory.mktemp("studio") / "workspace"
    proc, url = start_studio(workspace)
    yield {"url": url, "workspace": workspace, "process": proc}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def client(studio_server):
    from gradio_client import Client

    return Client(studio_server["url"], verbose=False)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where CUDA is (benchmarks/gpu_check.sh runs them there)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; benchmarks/gpu_check.sh runs these on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
