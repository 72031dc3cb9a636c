"""The real studio server, driven over HTTP with gradio_client."""


def test_named_endpoints_exist(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint in ("/load_model", "/model_summary", "/session_status", "/generate",
                     "/job_status", "/stop_job"):
        assert endpoint in names


def test_default_model_is_preloaded_and_summarised(client):
    summary, _ = client.predict(api_name="/model_summary")
    assert summary["layers"] == 30 and summary["query_heads"] == 9 and summary["kv_heads"] == 3
    assert summary["glu_width"] == 1536


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
