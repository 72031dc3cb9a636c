"""Evaluate & Export tab through the real server and gradio_client (shared `client` fixture)."""
from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

ENDPOINTS = ("/compare_models", "/export_model", "/stakeholder_report", "/side_by_side",
             "/lm_eval", "/push_to_hub")


def _frame(value) -> pd.DataFrame:
    return pd.DataFrame(value["data"], columns=value["headers"])


def test_endpoints_exist(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint in ENDPOINTS:
        assert endpoint in names, endpoint


def test_compare_side_by_side_and_report(client):
    client.predict("default", "auto", False, False, api_name="/load_model")  # base only
    table, csv, overview, *charts = client.predict("builtin:python-docs", "", 256,
                                                   api_name="/compare_models")
    frame = _frame(table)
    assert list(frame["role"]) == ["base"]
    assert frame.loc[0, "params"] == 134_515_008 and float(frame.loc[0, "ppl_general"]) > 1
    assert float(frame.loc[0, "forward_tok_s"]) > 0 and float(frame.loc[0, "gen_tok_s"]) > 0
    downloaded = pd.read_csv(csv)
    assert list(downloaded["role"]) == ["base"] and "ttft_s" in downloaded.columns
    assert overview is not None and len(charts) == 5
    answers = _frame(client.predict("What is the capital of France?", 8, False,
                                    api_name="/side_by_side"))
    assert "base" in answers.columns and "Paris" in answers.loc[0, "base"]
    report = client.predict("builtin:python-docs", "", 256, api_name="/stakeholder_report")
    text = Path(report).read_text()
    assert text.startswith("<!DOCTYPE html>") and "plotly" in text and "Paris" in text


def test_export_zip_and_no_silent_overwrite(client):
    from gradio_client.exceptions import AppError

    name = f"ui-export-{int(time.time())}"
    info, archive = client.predict(name, "working", False, api_name="/export_model")
    assert info["verification"]["passed"] and info["verification"]["max_abs_diff"] < 1e-4
    assert "README.md" in info["files"] and "recipe.yaml" in info["files"]
    assert f"{name}/model.safetensors" in zipfile.ZipFile(archive).namelist()
    with pytest.raises(AppError) as err:
        client.predict(name, "working", False, api_name="/export_model")
    assert "already exists" in str(err.value)
    with pytest.raises(AppError) as err:
        client.predict("../outside", "working", False, api_name="/export_model")
    assert "not allowed" in str(err.value)
    with pytest.raises(AppError) as err:  # offline: one clear sentence, session still usable
        client.predict(name, "someone/model", "hf_fake", True, api_name="/push_to_hub")
    assert "Could not push" in str(err.value)
