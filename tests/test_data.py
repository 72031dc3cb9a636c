"""Text sources → token blocks: every format, reproducibility, and bad input."""
import json
import random
import time

import pytest
import torch

from studio.data import load_documents, pubmedqa_records, token_blocks
from studio.errors import DataSourceError
from tests.conftest import PUBMEDQA, WIKI_TEST, need_data


def test_txt_blocks_are_the_first_tokens(tokenizer):
    path = need_data(WIKI_TEST)
    blocks = token_blocks(tokenizer, str(path), 512, 8192)
    assert blocks.shape == (16, 512)
    direct = tokenizer(path.read_text()[:60000], add_special_tokens=False)["input_ids"]
    assert blocks.flatten()[:1000].tolist() == direct[:1000]


def test_seeded_blocks_are_reproducible(tokenizer):
    a = token_blocks(tokenizer, "builtin:python-docs", 128, 1024, seed=3)
    b = token_blocks(tokenizer, "builtin:python-docs", 128, 1024, seed=3)
    c = token_blocks(tokenizer, "builtin:python-docs", 128, 1024, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_table_formats_and_templates(tmp_path, tokenizer):
    rows = [{"q": f"question {i}", "a": f"answer {i}", "text": f"plain text {i}"} for i in range(50)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        docs, _ = load_documents(str(tmp_path / name))
        assert docs[3] == "plain text 3"
        docs, _ = load_documents(f"{tmp_path / name}#Q: {{q}} A: {{a}}")
        assert docs[2] == "Q: question 2 A: answer 2"
    assert token_blocks(tokenizer, str(tmp_path / "d.jsonl") + "#q", 16, 64).shape == (4, 16)


def test_pubmedqa_split_is_the_official_one():
    path = need_data(PUBMEDQA)
    test, train = pubmedqa_records(path, "test"), pubmedqa_records(path, "train")
    assert len(test) == len(train) == 500
    assert not {r["id"] for r in test} & {r["id"] for r in train}
    docs, _ = load_documents(f"pubmedqa:{path}:test")
    assert len(docs) == 500 and docs[0] == " ".join(test[0]["CONTEXTS"])


def test_builtin_python_docs_is_offline(tokenizer):
    docs, _ = load_documents("builtin:python-docs")
    assert len(docs) > 50 and any("lambda" in d for d in docs)


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"\x00\x01\x02binary\x00", "binary"),
    ("caf\xe9 cr\xe8me".encode("latin-1"), "not UTF-8"),
])
def test_bad_text_files(tmp_path, tokenizer, content, needle):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match=needle):
        token_blocks(tokenizer, str(path), 16, 64)


def test_bad_table_inputs(tmp_path, tokenizer):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n{"other": "y"}\n')
    with pytest.raises(DataSourceError, match="not in the data"):
        load_documents(str(tmp_path / "a.jsonl") + "#text")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{broken\n')
    with pytest.raises(DataSourceError, match="Could not read"):
        load_documents(str(tmp_path / "b.jsonl"))
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataSourceError, match="Field 'text'"):
        load_documents(str(tmp_path / "c.csv"))


@pytest.mark.parametrize("tokens,block,needle", [(0, 16, "positive"), (8, 16, "smaller than one block"),
                                                 (10**9, 512, "fewer than")])
def test_bad_token_budgets(tokenizer, tokens, block, needle):
    with pytest.raises(DataSourceError, match=needle):
        token_blocks(tokenizer, "builtin:python-docs", block, tokens)


def test_unknown_sources():
    with pytest.raises(DataSourceError, match="builtin:python-docs"):
        load_documents("builtin:nope")
    with pytest.raises(DataSourceError, match="does not exist"):
        load_documents("/no/such/file.txt")


def test_json_list_of_records_with_a_field(tmp_path, tokenizer):
    records = [{"id": i, "abstract": f"Abstract number {i} about insulin.", "title": f"T{i}"}
               for i in range(40)]
    path = tmp_path / "papers.json"
    path.write_text(json.dumps(records))
    docs, sep = load_documents(f"{path}#abstract")
    assert docs == [r["abstract"] for r in records] and sep == "\n\n"
    docs, _ = load_documents(f"{path}#{{title}}: {{abstract}}")
    assert docs[5] == "T5: Abstract number 5 about insulin."
    with pytest.raises(DataSourceError, match="Field 'text' is not in the data"):
        load_documents(str(path))  # no field given and no 'text' field: one sentence naming them
    blocks = token_blocks(tokenizer, f"{path}#abstract", 32, 128)
    direct = [t for r in records for t in tokenizer(r["abstract"] + "\n\n",
                                                     add_special_tokens=False)["input_ids"]]
    assert blocks.flatten().tolist() == direct[:128]


@pytest.mark.timeout(120)
def test_hf_source_offline_is_one_sentence():
    """No network here (HF_HUB_OFFLINE=1 from conftest, so no retries): a DataSourceError in
    one sentence that names the dataset and what to do."""
    started = time.perf_counter()
    with pytest.raises(DataSourceError) as err:
        load_documents("hf:some/name")
    message = str(err.value)
    assert message.startswith("Could not load Hugging Face dataset 'some/name'")
    assert "use a local file" in message and "\n" not in message
    assert message.endswith(".") and ". " not in message  # one sentence
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("seed", [None, 7])
def test_tokenization_equals_the_tokenizer_on_the_documents(tokenizer, seed):
    """token_blocks (a datasets map over the documents, stopping early) gives exactly the ids of
    the tokenizer applied to each document plus its separator, in (seeded) document order."""
    docs, sep = load_documents("builtin:python-docs")
    if seed is not None:
        docs = docs[:]
        random.Random(seed).shuffle(docs)
    direct = []
    for doc in docs[:200]:
        direct.extend(tokenizer(doc + sep, add_special_tokens=False)["input_ids"])
        if len(direct) >= 20_000:
            break
    blocks = token_blocks(tokenizer, "builtin:python-docs", 500, 20_000, seed=seed)
    assert blocks.shape == (40, 500) and blocks.flatten().tolist() == direct[:20_000]


def test_tokenization_stops_early_and_writes_no_cache(tokenizer, tmp_path, monkeypatch):
    import datasets

    from studio import data

    calls = []
    real = data._tokenized

    def counting(tok, docs, sep, batch=data.TOKENIZE_BATCH):
        for rows in real(tok, docs, sep, batch):
            calls.append(len(rows["input_ids"]))
            yield rows

    monkeypatch.setattr(data, "_tokenized", counting)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # default cache
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document {i} " * 20}) for i in range(5000)))
    blocks = token_blocks(tokenizer, str(path), 64, 256)
    assert blocks.shape == (4, 64)
    assert calls == [data.TOKENIZE_BATCH]  # one batch of 64 documents sufficed, not 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]  # no cache written
