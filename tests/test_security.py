"""Security: binding and its warning, authentication, file access of the server, consent ticks
recorded in the recipe, and a workspace without pickle files after training."""
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from transformers import TrainerCallback

from tests.conftest import ROOT, start_studio

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# ------------------------------------------------------------------------ binding and its warning
def test_loopback_by_default_and_warning_when_exposed():
    import launch

    assert launch.parse_args([]).host == "127.0.0.1"
    assert launch.parse_args([]).share is False
    assert launch.exposure_warning("127.0.0.1", None) is None
    assert "--auth" in launch.exposure_warning("0.0.0.0", None)
    assert launch.exposure_warning("0.0.0.0", ("u", "p")) is None


def _dry_run(tmp_path, *extra):
    workspace = tmp_path / "ws"
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--workspace", str(workspace),
                           "--model", "none", "--dry-run", *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, workspace.resolve()


def test_exposed_host_without_auth_prints_the_warning(tmp_path):
    """The real entry point (main), stopped before serving: what a user sees on the console."""
    settings, stderr, workspace = _dry_run(tmp_path, "--host", "0.0.0.0")
    assert "WARNING" in stderr and "Binding 0.0.0.0 without --auth" in stderr, stderr
    assert "add --auth USER:PASS" in stderr
    assert settings["server_name"] == "0.0.0.0" and settings["auth"] is None
    assert settings["allowed_paths"] == [str(workspace)]  # Gradio may serve the workspace alone

    settings, stderr, _ = _dry_run(tmp_path, "--host", "0.0.0.0", "--auth", "alice:s3cret")
    assert "without --auth" not in stderr, stderr
    assert settings["auth"] == "***" and "s3cret" not in json.dumps(settings)


def test_allowed_paths_is_the_workspace_alone(tmp_path):
    import launch

    args = launch.parse_args(["--workspace", str(tmp_path / "ws")])
    settings = launch.launch_settings(args, (tmp_path / "ws").resolve(), None)
    assert settings["allowed_paths"] == [str((tmp_path / "ws").resolve())]


# ------------------------------------------------------------------------ authentication
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("auth") / "ws"
    proc, url = start_studio(workspace, "--auth", "alice:s3cret", "--model", "none")
    yield url, workspace
    _stop(proc)


def test_unauthenticated_requests_are_refused(auth_server):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    url, _ = auth_server
    for path in ("config", "gradio_api/info", "gradio_api/file=" + str(ROOT / "launch.py")):
        code, _ = _get(url + path)
        assert code == 401, (path, code)
    call = urllib.request.Request(url + "gradio_api/call/session_status", data=b'{"data": []}',
                                  headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(call, timeout=10)
    assert err.value.code == 401
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(url, verbose=False)
    wrong = urllib.request.Request(url + "login", data=b"username=alice&password=wrong",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as err:  # Gradio answers a wrong password with 400
        urllib.request.urlopen(wrong, timeout=10)
    assert err.value.code == 400 and b"Incorrect credentials" in err.value.read()
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("alice", "wrong"), verbose=False)


def test_authenticated_client_works(auth_server):
    from gradio_client import Client

    url, workspace = auth_server
    status = Client(url, auth=("alice", "s3cret"), verbose=False).predict(api_name="/session_status")
    assert status["workspace"] == str(workspace.resolve()) and status["models"] == {}


# ------------------------------------------------------------------------ file access
@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """A studio without a model and without auth: only its file route and config are used."""
    root = tmp_path_factory.mktemp("files")
    workspace = root / "ws"
    proc, url = start_studio(workspace, "--model", "none")
    yield url, workspace.resolve(), root
    _stop(proc)


def test_only_workspace_files_are_served(open_server):
    url, workspace, root = open_server
    inside = workspace / "exports" / "probe.txt"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text("inside the workspace")
    beside = root / "beside.txt"  # next to the workspace, not in it
    beside.write_text("beside the workspace")
    link = workspace / "link.txt"  # a link inside pointing outside
    link.symlink_to(beside)

    code, body = _get(url + f"gradio_api/file={inside}")  # positive control
    assert code == 200 and body == b"inside the workspace"
    for path in (ROOT / "launch.py", Path(__file__), beside, link, "/etc/passwd",
                 f"{workspace}/../beside.txt", "../../etc/passwd"):
        code, body = _get(url + f"gradio_api/file={path}")
        assert code == 403, (path, code)
        assert b"beside the workspace" not in body and b"def main" not in body and b"root:" not in body


def test_consent_ticks_are_off_in_the_model_tab(open_server):
    url, _, _ = open_server
    code, body = _get(url + "config")
    assert code == 200
    boxes = {c["props"]["label"]: c["props"]["value"] for c in json.loads(body)["components"]
             if c.get("type") == "checkbox" and "label" in c.get("props", {})}
    trust = [v for label, v in boxes.items() if label.startswith("trust_remote_code")]
    pickle = [v for label, v in boxes.items() if label.startswith("allow pickle")]
    assert trust == [False] and pickle == [False], boxes


# ------------------------------------------------------------------------ consent in the recipe
def test_consent_ticks_are_recorded_in_the_recipe(tmp_path, tiny_dir):
    import inspect

    from studio.recipe import validate
    from studio.session import Session

    defaults = inspect.signature(Session.load).parameters
    assert defaults["trust_remote_code"].default is False and defaults["allow_pickle"].default is False
    session = Session(tmp_path / "ws", device="cpu")
    session.load(str(tiny_dir("llama")))
    step = session.recipe[0]
    assert step["step"] == "load" and step["trust_remote_code"] is False and step["allow_pickle"] is False
    session.load(str(tiny_dir("llama")), trust_remote_code=True, allow_pickle=True)
    step = session.recipe[0]
    assert step["trust_remote_code"] is True and step["allow_pickle"] is True
    assert validate({"studio_recipe": 1, "steps": session.recipe})[0] == step  # replayable as is


# ------------------------------------------------------------------------ no pickle on disk
class StopAt(TrainerCallback):
    """Stop (and checkpoint) at a given step, as the Stop button does."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = control.should_save = True


def test_workspace_holds_no_pickle(tmp_path, tiny_dir):
    """Distillation (checkpoint, stop, resume) and LoRA (checkpoint, adapter) write only
    safetensors and JSON; a checkpoint with pickle training state is refused on resume."""
    from studio.distill import DistillConfig
    from studio.distill_run import run
    from studio.errors import TrainingError
    from studio.lora import LoraConfig, train_lora
    from studio.session import STUDENT, Session

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} fox counts to {i * 7}."
                              for i in range(300)))
    session = Session(tmp_path / "ws", device="cpu")
    session.load(str(tiny_dir("llama")))
    session.set_model(STUDENT, session.copy_of("base"))
    config = DistillConfig(data=str(text), steps=4, batch=2, block=32, eval_tokens=64, eval_every=2,
                           save_every=100, lr=1e-3, run_name="safe")
    out = session.path("distill", "safe")
    first = run(session.get("base"), session.get(STUDENT), config, out, callbacks=[StopAt(2)])
    assert first["steps"] == 2 and (out / "checkpoint-2").is_dir()
    second = run(session.get("base"), session.get(STUDENT), config, out, resume=True)
    assert second["steps"] == 4

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"q": f"What is {i} plus {i}?", "a": f"It is {2 * i}."})
                              for i in range(12)))
    lora = LoraConfig(data=str(data), format="instruction", prompt_field="q", response_field="a",
                      steps=10, rank=4, alpha=8, block_len=64, batch_size=2, eval_every=10,
                      gen_tokens=2, prompts=["Hello"], finish="adapter", run_name="safe")
    result = train_lora(session, lora)
    assert result["steps"] == 10 and (Path(result["adapter_dir"]) / "adapter_config.json").is_file()

    checkpoints = [out / "checkpoint-2", out / "checkpoint-4",
                   session.path("lora", "safe", "checkpoints", "checkpoint-10")]
    for checkpoint in checkpoints:
        names = {p.name for p in checkpoint.iterdir()}
        assert {"optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.json",
                "rng_state.safetensors", "training_args.json", "trainer_state.json"} <= names, names
        assert names & {"model.safetensors", "adapter_model.safetensors"}, names
    pickles = [str(p.relative_to(session.workspace)) for p in session.workspace.rglob("*")
               if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    assert pickles == []

    # an older checkpoint with pickle training state: refused, never unpickled
    legacy = out / "checkpoint-4"
    (legacy / "optimizer.json").unlink()
    (legacy / "optimizer.pt").write_bytes(b"\x80\x04not loaded")
    more = DistillConfig(**{**config.to_dict(), "steps": 6})
    with pytest.raises(TrainingError, match="pickle"):
        run(session.get("base"), session.get(STUDENT), more, out, resume=True)
