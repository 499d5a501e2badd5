"""A tiny BERT classifier (HF directory + jsonl texts) through the whole classic pipeline."""

from __future__ import annotations

import json

from llmquant.board import Board
from llmquant.classic.pipeline import run_classic
from llmquant.recipe import parse_recipe


def bert_recipe(model_dir, data, tmp_path, variants):
    return parse_recipe({
        "kind": "classic", "name": "tiny-bert",
        "model": {"hf": str(model_dir)},
        "data": {"source": str(data), "max_length": 16, "validation": 200, "calibration": 100, "seed": 1},
        "validation": {"batch_size": 32, "latency": {"warmup": 1, "repeats": 5}, "compile": False, "threads": 1},
        "variants": variants,
        "output": {"dir": str(tmp_path / "run"), "board": str(tmp_path / "board.sqlite")},
    })


def test_tiny_bert_dynamic_static_qat_onnx(tiny_bert, tmp_path):
    model_dir, data = tiny_bert
    variants = [
        {"name": "dyn", "method": "dynamic"},
        {"name": "static", "method": "static"},
        {"name": "qat", "method": "qat", "epochs": 1, "lr": 1e-4, "batch_size": 32},
        {"name": "ort-dyn", "method": "onnx_dynamic"},
        {"name": "ort-static", "method": "onnx_static"},
    ]
    s = run_classic(bert_recipe(model_dir, data, tmp_path, variants))
    base = s.baseline
    assert base.metric > 90, "the tiny BERT should have learnt the synthetic task"
    assert base.n == 200 and base.format == "pt2"
    by = {o.name: o for o in s.variants}
    for name, o in by.items():
        r = o.result
        assert o.artifact.path.is_file() and r.size_bytes == o.artifact.path.stat().st_size
        assert r.n == 200 and r.nonfinite == 0
        # INT8 keeps this easy task (a word's presence) nearly intact
        assert r.metric >= base.metric - 5, (name, r.metric, base.metric)
        # every variant stores INT8 weights for the Linear layers: fewer tensor bytes than fp32
        assert r.weights_bytes < 0.75 * base.weights_bytes, (name, r.weights_bytes, base.weights_bytes)
        assert r.latency_ms_median and r.throughput
    assert by["static"].summary["int8_weight_tensors"] >= 12  # 2 layers x 6 Linear
    assert by["ort-dyn"].result.format == "onnx"
    rows = Board(tmp_path / "board.sqlite").rows(run="tiny-bert")
    assert {r.variant for r in rows} == {"baseline", *by} and all(r.metric_name == "accuracy" for r in rows)
    res = json.loads((s.run_dir / "results.json").read_text())
    assert res["kind"] == "classic" and res["splits"]["calibration"] == 100


def test_text_labels_follow_the_models_label2id(tiny_bert, tmp_path):
    """'neg'/'pos' strings map through the model's config, not alphabetical order by chance."""
    from llmquant.classic.data import load_dataset
    from llmquant.classic.models import open_source
    from llmquant.classic.recipe import ClassicDataSpec, ClassicModelSpec

    model_dir, data = tiny_bert
    src = open_source(ClassicModelSpec(hf=str(model_dir)), tmp_path)
    assert src.label2id == {"neg": 0, "pos": 1}
    ds = load_dataset(ClassicDataSpec(source=str(data), max_length=16), tmp_path, src.tokenizer, src.label2id)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    assert ds.labels.tolist() == [src.label2id[r["label"]] for r in rows]
    assert ds.input_names == ("input_ids", "attention_mask") and ds.inputs[0].shape == (700, 16)
