"""The classic pipeline end to end on the digits CNN: recipe → run dir, leaderboard rows,
results.json, a resumable rerun; the CLI's run and validate on classic recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmquant.board import Board
from llmquant.classic.pipeline import run_classic
from llmquant.cli import app
from llmquant.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[3]


def write_recipe(tmp_path, weights: Path, variants, **extra) -> Path:
    doc = {
        "kind": "classic", "name": "digits-test",
        "model": {"factory": "llmquant.classic.zoo:digits_cnn", "weights": str(weights)},
        "data": {"source": "builtin:digits", "validation": 0.2, "calibration": 256, "seed": 0},
        "validation": {"batch_size": 64, "latency": {"warmup": 2, "repeats": 10}, "compile": False, "threads": 1},
        "variants": variants,
        "output": {"dir": "run", "board": "board.sqlite"},
        **extra,
    }
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_run_records_board_results_and_resumes(digits_model, digits_splits, tmp_path):
    net, weights = digits_model
    path = write_recipe(tmp_path, weights, [{"name": "static-int8", "method": "static"},
                                            {"name": "ort-static", "method": "onnx_static"}])
    s = run_classic(load_recipe(path))
    assert s.run_dir == tmp_path / "run"
    import torch

    from llmquant.classic.validate import accuracy_pct

    with torch.no_grad():  # the baseline's accuracy, computed here without the pipeline
        expected = accuracy_pct(net(*digits_splits.validation.inputs).numpy(), digits_splits.validation.labels.numpy())
    assert s.baseline.metric == pytest.approx(expected, abs=1e-9)
    assert [o.name for o in s.variants] == ["static-int8", "ort-static"]
    assert all(o.quantized_now and o.evaluated_now for o in s.variants)
    for o in s.variants:
        assert o.verdict in ("excellent", "acceptable")
        assert o.result.size_bytes < s.baseline.size_bytes
    rows = Board(tmp_path / "board.sqlite").rows(run="digits-test")
    assert len(rows) == 3 and {r.protocol_key for r in rows} == {s.baseline.protocol.key}
    by = {r.variant: r for r in rows}
    assert by["baseline"].is_baseline == 1 and by["baseline"].verdict == "baseline"
    assert by["static-int8"].delta_metric_pts == pytest.approx(by["static-int8"].metric - by["baseline"].metric)
    assert by["static-int8"].bits == 8 and by["static-int8"].ppl is None and by["static-int8"].latency_ms_median > 0
    md = (s.run_dir / "leaderboard.md").read_text()
    assert "accuracy %" in md and "| static-int8 | static | pt2 |" in md and "Winner" in md
    res = json.loads((s.run_dir / "results.json").read_text())
    assert res["splits"]["calibration_coverage"]["present"] == 10
    assert res["variants"][0]["quantize"]["int8_weight_tensors"] == 4
    # rerun: nothing is quantized or validated again
    again = run_classic(load_recipe(path))
    assert not any(o.quantized_now or o.evaluated_now for o in again.variants)
    assert again.baseline == s.baseline
    assert len(Board(tmp_path / "board.sqlite").rows(run="digits-test")) == 3  # upserted, not duplicated


def test_train_from_scratch_is_cached(tmp_path):
    doc = {"kind": "classic", "model": {"factory": "llmquant.classic.zoo:digits_cnn", "train": {"epochs": 2, "lr": 0.01}},
           "data": {"source": "builtin:digits", "calibration": 100},
           "validation": {"latency": {"warmup": 0, "repeats": 5}, "compile": False, "threads": 1},
           "output": {"dir": "run", "board": "b.sqlite"}}
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(doc))
    s = run_classic(load_recipe(p))
    assert s.baseline.metric > 60 and "trained here" in s.model
    cached = list((tmp_path / "run" / "cache").glob("trained-*.pt"))
    assert len(cached) == 1
    assert run_classic(load_recipe(p)).baseline == s.baseline


def test_cli_run_and_validate_classic(digits_model, tmp_path):
    _, weights = digits_model
    path = write_recipe(tmp_path, weights, [{"name": "dyn", "method": "dynamic"}])
    r = CliRunner().invoke(app, ["validate", str(path)])
    assert r.exit_code == 0 and "classic model llmquant.classic.zoo:digits_cnn + cnn.pt" in r.output
    r = CliRunner().invoke(app, ["run", str(path)])
    assert r.exit_code == 0, r.output
    assert "accuracy %" in r.output and "winner:" in r.output
    r = CliRunner().invoke(app, ["board", "--board", str(tmp_path / "board.sqlite"), "--format", "md"])
    assert "| dyn | dynamic | pt2 |" in r.output


def test_cli_run_refuses_pickled_weights(tmp_path):
    import torch

    from llmquant.classic.zoo import digits_cnn

    bad = tmp_path / "whole-model.pt"
    torch.save(digits_cnn(), bad)  # a pickled module, not a state_dict
    path = write_recipe(tmp_path, bad, [])
    r = CliRunner().invoke(app, ["run", str(path)])
    assert r.exit_code == 2
    assert "model.weights" in r.output and "refused" in r.output and "weights_only" in r.output
    assert not (tmp_path / "board.sqlite").exists() or not Board(tmp_path / "board.sqlite").rows()


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "classic").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_classic_recipes_validate(path):
    from llmquant.classic.preflight import preflight_classic
    from llmquant.classic.recipe import ClassicRecipe

    r = load_recipe(path)
    assert isinstance(r, ClassicRecipe) and r.variants
    rep = preflight_classic(r)
    assert rep.model and rep.data
