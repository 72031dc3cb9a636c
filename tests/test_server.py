"""The real studio server, driven over HTTP with gradio_client."""
import json

from tests.test_activations_ui import array


def test_named_endpoints_exist(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint in ("/load_model", "/model_summary", "/session_status", "/generate",
                     "/job_status", "/stop_job"):
        assert endpoint in names


def test_default_model_is_preloaded_and_summarised(client):
    summary, diagram = client.predict(api_name="/model_summary")
    assert summary["layers"] == 30 and summary["query_heads"] == 9 and summary["kv_heads"] == 3
    assert summary["glu_width"] == 1536
    assert diagram["type"] == "plotly"
    fig = json.loads(diagram["plot"])
    (grid,) = fig["data"]  # one heatmap: a column per layer, a row per block
    assert grid["type"] == "heatmap" and grid["x"] == [f"L{i}" for i in range(30)]
    assert grid["y"] == ["Query heads", "KV heads", "MLP (GLU) width"]
    assert array(grid["z"]).shape == (3, 30) and (array(grid["z"]) == 1.0).all()  # nothing pruned
    assert [set(row) for row in grid["text"]] == [{"9"}, {"3"}, {"1536"}]
    assert all(len(row) == 30 for row in grid["text"])
    assert "30 layers" in fig["layout"]["title"]["text"] and "134.5M params" in fig["layout"]["title"]["text"]


def test_trust_remote_code_is_off_by_default(client):
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/load_model"]["parameters"]
    trust = next(p for p in params if p["label"].startswith("trust_remote_code"))
    assert trust["parameter_has_default"] and trust["parameter_default"] is False
    pickle = next(p for p in params if p["label"].startswith("allow pickle"))
    assert pickle["parameter_default"] is False
    boxes = [c["props"] for c in client.config["components"]
             if str(c.get("props", {}).get("label", "")).startswith("trust_remote_code")]
    assert len(boxes) == 1 and boxes[0]["value"] is False


def test_load_and_generate(client):
    summary, _ = client.predict("default", "auto", False, False, api_name="/load_model")
    assert summary["params"] == 134_515_008
    text, timing = client.predict("What is the capital of France?", 12, "working",
                                  api_name="/generate")
    assert "Paris" in text and timing["new_tokens"] > 0
    status = client.predict(api_name="/session_status")
    assert "base" in status["models"]
    assert any(j["name"] == "load default" and j["status"] == "done" for j in status["jobs"])


def test_bad_load_is_one_sentence_and_session_survives(client):
    import pytest
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict("./no/such/folder", "auto", False, False, api_name="/load_model")
    assert "neither an existing path" in str(err.value)
    summary, _ = client.predict(api_name="/model_summary")
    assert summary["layers"] == 30


def test_jobs_panel_rows_say_state_in_two_columns():
    """The narrow side panel: one row per job, newest first, the id to stop it by, and the
    progress and ETA only while a job is under way."""
    from components.session_panel import jobs_frame

    status = {"jobs": [
        {"name": "load default", "id": "j1", "status": "done", "progress": 1.0, "message": "done",
         "eta_s": None},
        {"name": "distill", "id": "j2", "status": "running", "progress": 0.25,
         "message": "step 1/4", "eta_s": 9.2},
        {"name": "lora", "id": "j3", "status": "failed", "progress": 0.1,
         "message": "Out of memory; lower the batch.", "eta_s": None}]}
    frame = jobs_frame(status)
    assert list(frame.columns) == ["job", "state"]
    assert frame.to_dict("records") == [
        {"job": "lora (j3)", "state": "failed: Out of memory; lower the batch."},
        {"job": "distill (j2)", "state": "running 25%, ETA 9 s: step 1/4"},
        {"job": "load default (j1)", "state": "done"}]
