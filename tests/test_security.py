"""Binding, authentication and file access of the studio server."""
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.conftest import start_studio


def test_loopback_by_default_and_warning_when_exposed():
    import launch

    assert launch.parse_args([]).host == "127.0.0.1"
    assert launch.parse_args([]).share is False
    assert launch.exposure_warning("127.0.0.1", None) is None
    assert "--auth" in launch.exposure_warning("0.0.0.0", None)
    assert launch.exposure_warning("0.0.0.0", ("u", "p")) is None


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("auth") / "ws"
    proc, url = start_studio(workspace, "--auth", "alice:s3cret", "--model", "none")
    yield url, workspace
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_unauthenticated_requests_are_refused(auth_server):
    url, _ = auth_server
    for path in ("config", "gradio_api/info"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + path, timeout=10)
        assert err.value.code in (401, 403)
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(url, verbose=False).predict(api_name="/session_status")


def test_authenticated_client_works(auth_server):
    from gradio_client import Client

    url, workspace = auth_server
    status = Client(url, auth=("alice", "s3cret"), verbose=False).predict(api_name="/session_status")
    assert status["workspace"] == str(workspace.resolve()) and status["models"] == {}


def test_files_outside_the_workspace_are_not_served(auth_server, studio_server):
    url = studio_server["url"]
    for path in ("gradio_api/file=/etc/passwd", "gradio_api/file=../../etc/passwd",
                 f"gradio_api/file={__file__}"):
        try:
            body = urllib.request.urlopen(url + path, timeout=10).read()
        except urllib.error.HTTPError as err:
            assert err.code in (403, 404, 400)
        else:
            assert b"root:" not in body and b"def test_" not in body
