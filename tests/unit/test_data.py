import json
import logging

import pytest
import torch

from llmquant.data import calibration_crops, check_eval_length, load_corpus
from llmquant.errors import UserError
from llmquant.recipe import DatasetSpec


def corpus(tmp_path, name, content, **kw):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return load_corpus(DatasetSpec(source=name, **kw), tmp_path, "eval.dataset")


def test_text_jsonl_json(tmp_path):
    assert corpus(tmp_path, "a.txt", "hello world").text == "hello world"
    lines = "\n".join(json.dumps({"text": t}) for t in ["one", "two"]) + "\n\n"
    assert corpus(tmp_path, "a.jsonl", lines).text == "one\n\ntwo"
    assert corpus(tmp_path, "b.json", json.dumps([{"body": "x"}, {"body": "y"}]), field="body").text == "x\n\ny"


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", "beta"]}), tmp_path / "d.parquet")
    assert load_corpus(DatasetSpec(source="d.parquet"), tmp_path, "f").text == "alpha\n\nbeta"


def test_bad_corpora(tmp_path):
    with pytest.raises(UserError, match="eval.dataset: corpus a.txt is empty"):
        corpus(tmp_path, "a.txt", "  \n")
    with pytest.raises(UserError, match="looks binary"):
        corpus(tmp_path, "b.txt", b"abc\x00\x01")
    with pytest.raises(UserError, match="not UTF-8"):
        corpus(tmp_path, "c.txt", b"\xff\xfe\xfa")
    with pytest.raises(UserError, match="record 2 .* has no 'text' field"):
        corpus(tmp_path, "d.jsonl", '{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(UserError, match="line 1 is not valid JSON"):
        corpus(tmp_path, "e.jsonl", "{not json\n")
    with pytest.raises(UserError, match="not found"):
        load_corpus(DatasetSpec(source="missing.txt"), tmp_path, "eval.dataset")
    with pytest.raises(UserError, match="unknown builtin"):
        load_corpus(DatasetSpec(source="builtin:nope"), tmp_path, "eval.dataset")


def test_pydoc_splits_are_disjoint():
    train = load_corpus(DatasetSpec(source="builtin:pydoc", split="train"), None, "x").text
    test = load_corpus(DatasetSpec(source="builtin:pydoc", split="test"), None, "x").text
    assert len(test) > 50_000 and len(train) > 3 * len(test)
    assert test[:200] not in train


def test_calibration_crops_seeded(caplog):
    ids = torch.arange(1000).unsqueeze(0)
    a = calibration_crops(ids, 128, 32, seed=0)
    b = calibration_crops(ids, 128, 32, seed=0)
    c = calibration_crops(ids, 128, 32, seed=1)
    assert a.shape == (128, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all(a[:, 1:] - a[:, :-1] == 1)  # contiguous crops
    with caplog.at_level(logging.WARNING, logger="llmquant"):
        calibration_crops(ids, 10, 32, seed=0)
    assert "calibration uses 10 samples" in caplog.text
    with pytest.raises(UserError, match="not more than calibration.seqlen=1000"):
        calibration_crops(ids, 4, 1000, seed=0)


def test_eval_length():
    check_eval_length(torch.zeros(1, 512), 512, "c")
    with pytest.raises(UserError, match="has 300 tokens, fewer than one window of eval.seqlen=512"):
        check_eval_length(torch.zeros(1, 300), 512, "c")
