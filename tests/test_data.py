"""Text sources → token blocks: every format, reproducibility, and bad input."""
import json

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
