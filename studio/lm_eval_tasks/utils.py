"""Loaders for the studio's local lm-eval tasks; the data path comes from the task metadata."""
from __future__ import annotations

import json
from pathlib import Path

import datasets


def _path(metadata: dict, key: str) -> Path:
    value = metadata.get(key)
    if not value:
        raise ValueError(f"lm-eval task needs the setting '{key}' (a local file path)")
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path} does not exist")
    return path


def load_pubmedqa(**metadata) -> datasets.DatasetDict:
    from studio.data import pubmedqa_records

    records = pubmedqa_records(_path(metadata, "pubmedqa_path"), metadata.get("pubmedqa_split", "test"))
    rows = {"id": [r["id"] for r in records], "QUESTION": [r["QUESTION"] for r in records],
            "CONTEXTS": [list(r["CONTEXTS"]) for r in records],
            "final_decision": [r["final_decision"] for r in records]}
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)})


def pubmedqa_doc_to_text(doc) -> str:
    contexts = "\n".join(doc["CONTEXTS"])
    return f"Abstract: {contexts}\nQuestion: {doc['QUESTION']}\nAnswer:"


def load_mcq(**metadata) -> datasets.DatasetDict:
    path = _path(metadata, "mcq_path")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
