"""Text sources → `datasets.Dataset` of documents → fixed-length token blocks (seeded, reproducible).
Tables are read with `datasets` and tokenization is a lazy `datasets` map over the documents that
stops once the budget is met; neither writes cache files.

Source specs (one string, so the CLI, the UI and recipes share them):
  builtin:python-docs                 CPython's documentation topics (offline, in every Python)
  hf:NAME[:CONFIG][:SPLIT][#FIELD]    a Hugging Face dataset (needs the hub)
  pubmedqa:PATH[:train|test|all]      PubMedQA PQA-L contexts (test = the official 500-PMID split)
  PATH[#FIELD]                        .txt, or .jsonl/.json/.csv/.parquet with a text field
  PATH#TEMPLATE                       a template over several fields, e.g. "{question} {answer}"
"""
from __future__ import annotations

import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.errors import DataSourceError
from studio.progress import Progress, null_progress

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TXT_CHUNK_CHARS = 8000
MAX_SNIFF_BYTES = 64 << 20


@dataclass(frozen=True)
class TextSource:
    spec: str

    @property
    def name(self) -> str:
        return self.spec


def _fields_text(record: dict, field_or_template: str) -> str:
    def as_text(value) -> str:
        if value is None:
            raise DataSourceError(f"A record has no value for a templated field (fields: "
                                  f"{', '.join(k for k, v in record.items() if v is not None)}); "
                                  "fix the data or the template.")
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    if "{" in field_or_template:
        try:
            return field_or_template.format_map({k: as_text(v) for k, v in record.items()})
        except KeyError as exc:
            raise DataSourceError(f"Template field {exc} is not in the data (fields: "
                                  f"{', '.join(record)}); fix the template.") from None
    if record.get(field_or_template) is None:
        raise DataSourceError(f"Field '{field_or_template}' is not in the data (fields: "
                              f"{', '.join(record)}); choose one of those.")
    return as_text(record[field_or_template])


def _check_text_file(path: Path) -> str:
    raw = path.read_bytes()[:MAX_SNIFF_BYTES]
    if not raw.strip():
        raise DataSourceError(f"{path} is empty; give a file with text in it.")
    if b"\x00" in raw[:65536]:
        raise DataSourceError(f"{path} looks binary (it holds NUL bytes); give a UTF-8 text file.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{path} is not UTF-8 (bad byte at offset {exc.start}); convert it, "
                              "e.g. `iconv -f latin1 -t utf-8`.") from None


def _txt_documents(path: Path) -> list[str]:
    """Chunks of the raw file that concatenate back to it exactly (so perplexity sees the real text)."""
    text = _check_text_file(path)
    docs, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= TXT_CHUNK_CHARS:
            docs.append("".join(current))
            current, size = [], 0
    if current:
        docs.append("".join(current))
    return docs


def _table_documents(path: Path, field: str | None) -> list[str]:
    import datasets

    if path.stat().st_size == 0:
        raise DataSourceError(f"{path} is empty; give a file with records in it.")
    if path.suffix == ".json":
        records = _json_records(path)
    else:
        try:  # read into memory; the builder's arrow files go to a folder deleted right after,
            # not to the shared ~/.cache/huggingface/datasets (a run writes only to its workspace)
            with tempfile.TemporaryDirectory(prefix="tailor-data-") as scratch:
                ds = datasets.load_dataset(TABLE_SUFFIXES[path.suffix], data_files=str(path),
                                           split="train", cache_dir=scratch, keep_in_memory=True)
        except Exception as exc:
            raise DataSourceError(f"Could not read {path} ({_first_line(exc)}); check every line is "
                                  "a valid record.") from None
        records = ds
    field = field or "text"
    return [_fields_text(dict(r), field) for r in records]


def _json_records(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataSourceError(f"{path} is not valid JSON ({_first_line(exc)}); fix or re-export it.") from None
    if isinstance(data, dict):  # {id: record} as in PubMedQA
        return [{"id": k, **v} if isinstance(v, dict) else {"id": k, "text": v} for k, v in data.items()]
    if isinstance(data, list):
        return [r if isinstance(r, dict) else {"text": r} for r in data]
    raise DataSourceError(f"{path} holds a JSON {type(data).__name__}; give a list of records.")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _python_docs() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def pubmedqa_records(path: str | Path, split: str = "all") -> list[dict]:
    """PQA-L records with their id; split 'test' is the official 500 PMIDs beside the file."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"PubMedQA file {path} does not exist; point to ori_pqal.json.")
    records = _json_records(path)
    if split == "all":
        return records
    truth = path.parent / "test_ground_truth.json"
    if not truth.is_file():
        raise DataSourceError(f"{truth} is missing; it lists the test split's PMIDs.")
    test_ids = set(json.loads(truth.read_text()))
    if split not in ("train", "test"):
        raise DataSourceError(f"PubMedQA split '{split}' is unknown; use train, test or all.")
    return [r for r in records if (r["id"] in test_ids) == (split == "test")]


def _hf_documents(rest: str) -> list[str]:
    import datasets

    rest, _, field = rest.partition("#")
    parts = rest.split(":")
    name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 else "train"
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise DataSourceError(f"Could not load Hugging Face dataset '{rest}' ({_first_line(exc)}); "
                              "check the name and the network, or use a local file.") from None
    return [_fields_text(dict(r), field or "text") for r in ds]


def load_documents(spec: str) -> tuple[list[str], str]:
    """(documents, separator) for a source spec; documents joined by separator give the corpus."""
    spec = (spec or "").strip()
    if not spec:
        raise DataSourceError("No text source given; use a file path, hf:NAME or builtin:python-docs.")
    if spec == "builtin:python-docs":
        return _python_docs(), "\n\n"
    if spec.startswith("builtin:"):
        raise DataSourceError(f"Unknown built-in source '{spec}'; use builtin:python-docs (the only built-in one).")
    if spec.startswith("hf:"):
        return _hf_documents(spec[3:]), "\n\n"
    if spec.startswith("pubmedqa:"):
        path, _, split = spec[len("pubmedqa:"):].partition(":")
        return [" ".join(r["CONTEXTS"]) for r in pubmedqa_records(path, split or "all")], "\n\n"
    path_part, _, field = spec.partition("#")
    path = Path(path_part).expanduser()
    if not path.is_file():
        raise DataSourceError(f"Text source {path} does not exist; check the path.")
    if path.suffix in TABLE_SUFFIXES:
        return _table_documents(path, field or None), "\n\n"
    if field:
        raise DataSourceError(f"A field ('{field}') only applies to .jsonl/.json/.csv/.parquet files; "
                              f"remove '#{field}' to use the whole text of {path.name}.")
    return _txt_documents(path), ""


def load_dataset(spec: str):
    """The source as a `datasets.Dataset` with one 'text' column (for training loaders)."""
    import datasets

    docs, _ = load_documents(spec)
    return datasets.Dataset.from_dict({"text": docs})


def token_blocks(tokenizer, spec: str, block_len: int, max_tokens: int, seed: int | None = None,
                 progress: Progress = null_progress) -> torch.Tensor:
    """[n_blocks, block_len] token ids: the first max_tokens of the source, or (seed given) of its
    documents shuffled with that seed. Reproducible for the same (source, sizes, seed)."""
    if block_len <= 0 or max_tokens <= 0:
        raise DataSourceError(f"Token budget must be positive (got {max_tokens} tokens in blocks of "
                              f"{block_len}); pick at least one block.")
    if max_tokens < block_len:
        raise DataSourceError(f"Token budget {max_tokens} is smaller than one block of {block_len}; "
                              "raise the budget or shorten the block.")
    docs, sep = load_documents(spec)
    if seed is not None:
        docs = docs[:]
        random.Random(seed).shuffle(docs)
    need = (max_tokens // block_len) * block_len
    ids: list[int] = []
    for rows in _tokenized(tokenizer, docs, sep):
        for enc in rows["input_ids"]:
            ids.extend(enc)
        progress(min(len(ids) / need, 1.0), f"Tokenized {min(len(ids), need)}/{need} tokens")
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise DataSourceError(f"{spec} has only {len(ids)} tokens, fewer than the {need} asked for; "
                              f"lower the token budget to at most {len(ids) // block_len * block_len}.")
    return torch.tensor(ids[:need], dtype=torch.long).view(-1, block_len)


TOKENIZE_BATCH = 64  # documents per tokenizer call; token_blocks stops after the batch that suffices


def _tokenized(tokenizer, docs: list[str], sep: str, batch: int = TOKENIZE_BATCH):
    """Batches of {'input_ids': [...]} (each document followed by the separator), tokenized lazily
    by a `datasets` map over the documents in order: iteration stops as soon as the caller has
    enough tokens, and nothing is written to disk (an in-memory dataset streamed, no cache files)."""
    import datasets

    def encode(rows: dict) -> dict:
        texts = [d + sep for d in rows["text"]]
        return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    stream = datasets.Dataset.from_dict({"text": docs}).to_iterable_dataset()
    return stream.map(encode, batched=True, batch_size=batch, remove_columns=["text"]).iter(batch)
