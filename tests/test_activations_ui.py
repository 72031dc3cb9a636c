"""The Activations tab's endpoints on the real studio server (default model), via gradio_client."""
import base64
import json
import time

import numpy as np
import pandas as pd
import pytest
from gradio_client.exceptions import AppError

PROMPT = "The capital of France is"


def figure(value) -> dict:
    assert value["type"] == "plotly"
    return json.loads(value["plot"])


def array(value) -> np.ndarray:
    """A figure array: a plain list, or plotly's typed-array encoding {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        shape = [int(n) for n in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value)


def test_endpoints_exist(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint in ("/activation_stats", "/prompt_heatmap", "/attention_pattern", "/logit_lens",
                     "/compare_prompts", "/compare_datasets"):
        assert endpoint in names


def test_prompt_views(client):
    heat, html = client.predict(PROMPT, "residual stream", api_name="/prompt_heatmap")
    data = figure(heat)["data"][0]
    assert data["type"] == "heatmap" and array(data["z"]).shape == (30, 5)
    assert "<html" in open(html, encoding="utf-8").read(200).lower()
    attn, _ = client.predict(PROMPT, 3, 2, api_name="/attention_pattern")
    assert "layer 3 · head 2 (KV head 0)" in figure(attn)["layout"]["title"]["text"]
    lens, table, _ = client.predict(PROMPT, api_name="/logit_lens")
    assert array(figure(lens)["data"][0]["z"]).shape == (30, 5)
    assert "Paris" in table["data"][-1][1]
    same, _ = client.predict(PROMPT, PROMPT, "MLP output", api_name="/compare_prompts")
    assert (array(figure(same)["data"][0]["y"]) == 0).all()


def test_bad_layer_is_one_sentence(client):
    with pytest.raises(AppError, match="29"):  # the slider (or the engine) names the range
        client.predict(PROMPT, 99, 0, api_name="/attention_pattern")


def test_activation_stats_job_and_dataset_comparison(client, tmp_path):
    out = client.predict("builtin:python-docs", 512, False, api_name="/activation_stats")
    summary, neurons, _, heads, _, influence, _, csv = out
    assert summary["job_id"] and summary["neurons_shape"] == [30, 1536]
    assert summary["heads_shape"] == [30, 9] and len(summary["block_influence"]) == 30
    assert array(figure(neurons)["data"][0]["z"]).shape == (30, 512)
    assert array(figure(heads)["data"][0]["z"]).shape == (30, 9)
    assert array(figure(influence)["data"][0]["y"]).shape == (30,)
    frame = pd.read_csv(csv)
    assert set(frame.statistic) == {"mlp_act_abs_mean", "mlp_act_sq_mean", "head_norm_mean",
                                    "block_influence"}
    domain = tmp_path / "domain.txt"
    domain.write_text("Patients with type 2 diabetes received metformin and insulin. " * 60)
    result, diff, _ = client.predict("builtin:python-docs", str(domain), 512, True,
                                     api_name="/compare_datasets")
    assert len(result["top_neurons"]) == 10
    assert array(figure(diff)["data"][0]["z"]).shape == (30, 512)


def test_stats_job_can_be_stopped(client):
    job = client.submit("builtin:python-docs", 65536, False, api_name="/activation_stats")
    deadline = time.time() + 120
    while not job.outputs() and time.time() < deadline:
        time.sleep(0.2)
    job_id = job.outputs()[0][0]["job_id"]
    client.predict(job_id, api_name="/stop_job")
    with pytest.raises(AppError, match="stopped"):
        job.result()
    assert client.predict(job_id, api_name="/job_status")["status"] == "stopped"
