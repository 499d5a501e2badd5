"""kind: classic recipes: dispatch, defaults, and one-line errors with YAML paths."""

from __future__ import annotations

import pytest
import yaml

from llmquant.classic.recipe import ClassicRecipe
from llmquant.errors import UserError
from llmquant.recipe import Recipe, load_recipe, parse_recipe

BASE = {
    "kind": "classic",
    "model": {"factory": "llmquant.classic.zoo:digits_cnn", "weights": "w.pt"},
    "data": {"source": "builtin:digits"},
    "variants": [{"name": "s", "method": "static"}],
}
LLM = {"model": {"source": "x"}, "eval": {"dataset": "builtin:pydoc", "seqlen": 64}}


def bad(doc, tmp_path) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p))
    return msg


def test_dispatch_on_kind(tmp_path):
    assert isinstance(parse_recipe(BASE), ClassicRecipe)
    assert isinstance(parse_recipe(LLM), Recipe)  # no kind: an LLM recipe, as before
    assert isinstance(parse_recipe({**LLM, "kind": "llm"}), Recipe)
    assert "kind: 'vision' is not a known recipe kind" in bad({**LLM, "kind": "vision"}, tmp_path)


def test_defaults_and_paths(tmp_path):
    p = tmp_path / "sub" / "c.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(BASE))
    r = load_recipe(p)
    assert r.run_name == "c" and r.resolve("w.pt") == p.parent.resolve() / "w.pt"
    assert r.data.validation == 0.2 and r.data.calibration == 256 and r.validation.compile is True
    assert r.select.policy == "fastest_within" and r.select.max_loss_pts == 1.0
    assert r.model.kind == "factory"


def test_unknown_keys_name_their_path(tmp_path):
    doc = {**BASE, "variants": [{"name": "a", "method": "qat", "epoch": 3}]}
    assert "variants[0].epoch: unknown key" in bad(doc, tmp_path)
    assert "data.sorce: unknown key" in bad({**BASE, "data": {"sorce": "x"}}, tmp_path)


def test_unknown_and_missing_method(tmp_path):
    msg = bad({**BASE, "variants": [{"name": "a", "method": "magic"}]}, tmp_path)
    assert "variants[0].method: 'magic' is not a known method" in msg and "onnx_static" in msg
    assert "variants[0].method: required" in bad({**BASE, "variants": [{"name": "a"}]}, tmp_path)


def test_model_sources(tmp_path):
    assert "give exactly one of hf" in bad({**BASE, "model": {"hf": "d", "onnx": "m.onnx"}}, tmp_path)
    assert "give exactly one of hf" in bad({**BASE, "model": {}}, tmp_path)
    msg = bad({**BASE, "model": {"factory": "llmquant.classic.zoo:digits_cnn"}}, tmp_path)
    assert "model: a factory needs exactly one of weights" in msg
    assert "model.factory: got 'no-colon'" in bad({**BASE, "model": {"factory": "no-colon", "weights": "w"}}, tmp_path)
    assert "weights, train and kwargs go with factory only" in bad({**BASE, "model": {"hf": "d", "weights": "w"}},
                                                                  tmp_path)


def test_onnx_model_takes_only_onnx_quantizers(tmp_path):
    doc = {**BASE, "model": {"onnx": "m.onnx"}, "variants": [{"name": "a", "method": "onnx_static"},
                                                             {"name": "b", "method": "static"}]}
    assert "variants[1].method: 'static' needs a PyTorch model" in bad(doc, tmp_path)


def test_data_checks(tmp_path):
    assert "data.calibration: got 50" in bad({**BASE, "data": {"source": "builtin:digits", "calibration": 50}}, tmp_path)
    assert "data.calibration: got 5000" in bad({**BASE, "data": {"source": "builtin:digits", "calibration": 5000}},
                                               tmp_path)
    assert "data.validation: got 1.5" in bad({**BASE, "data": {"source": "builtin:digits", "validation": 1.5}}, tmp_path)
    assert "give both mean and std" in bad({**BASE, "data": {"source": "builtin:digits", "mean": [0.5]}}, tmp_path)
    doc = {**BASE, "data": {"source": "t.jsonl"}}
    assert "model.tokenizer: text data needs a tokenizer" in bad(doc, tmp_path)


def test_variant_checks(tmp_path):
    assert "already used by variants[0]" in bad({**BASE, "variants": [BASE["variants"][0]] * 2}, tmp_path)
    assert "already used by the baseline" in bad({**BASE, "variants": [{"name": "baseline", "method": "static"}]},
                                                 tmp_path)
    assert "variants[0]: give keep_float" in bad({**BASE, "variants": [{"name": "m", "method": "mixed"}]}, tmp_path)
    msg = bad({**BASE, "variants": [{"name": "m", "method": "static", "skip": ["("]}]}, tmp_path)
    assert "variants[0].skip" in msg and "not a valid regular expression" in msg
    assert "variants[0].dtype" in bad({**BASE, "variants": [{"name": "c", "method": "cast", "dtype": "int4"}]}, tmp_path)
    assert "variants[0].lr: got 0" in bad({**BASE, "variants": [{"name": "q", "method": "qat", "lr": 0}]}, tmp_path)


def test_readme_classic_example_parses():
    """The classic recipe block of docs/classic.md is a valid recipe (its commented alternatives aside)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "classic.md").read_text()
    block = text.split("```yaml\nkind: classic\n", 1)[1].split("```", 1)[0]
    r = parse_recipe(yaml.safe_load("kind: classic\n" + block))
    assert isinstance(r, ClassicRecipe) and [v.method for v in r.variants] == \
        ["dynamic", "static", "qat", "cast", "mixed", "onnx_static"]


def test_missing_packages_are_named_with_a_pip_hint(tmp_path, monkeypatch):
    import importlib.util

    from llmquant.classic.methods import missing_packages
    from llmquant.classic.pipeline import run_classic

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    assert missing_packages(["static", "onnx_static"]) == ["onnxruntime"]
    assert missing_packages(["static"]) == []
    r = parse_recipe({**BASE, "variants": [{"name": "o", "method": "onnx_static"}],
                      "output": {"dir": str(tmp_path / "run"), "board": str(tmp_path / "b.sqlite")}})
    with pytest.raises(UserError, match=r"needs onnxruntime: pip install 'llmquant\[classic\]'"):
        run_classic(r)
    assert not (tmp_path / "run").exists()
