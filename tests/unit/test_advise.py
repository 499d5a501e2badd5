"""Every branch of the advisor's decision rules, and its reading of finished runs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmquant.advise import Situation, explain, quantizes_activations, recommend
from llmquant.cli import app


def methods(advice) -> list[str]:
    return [s.method for s in advice.steps]


def test_already_fast_and_small_enough():
    a = recommend(Situation("cpu", size_mb=80, latency_ms=4, size_goal_mb=100, latency_goal_ms=5))
    assert not a.quantize and methods(a) == ["none"] and "already fast and small" in a.summary


def test_one_goal_missed_means_quantize():
    a = recommend(Situation("cpu", size_mb=80, latency_ms=9, size_goal_mb=100, latency_goal_ms=5, arch="transformer"))
    assert a.quantize and methods(a)[0] == "dynamic"


def test_goal_without_a_current_value_is_not_met():
    a = recommend(Situation("cpu", size_mb=80, latency_goal_ms=5, arch="transformer"))
    assert a.quantize


def test_small_model_is_left_alone():
    a = recommend(Situation("cpu", size_mb=2.5, latency_ms=1, latency_goal_ms=0.5))
    assert not a.quantize and "under ~5 MB" in a.steps[0].why


def test_small_model_quantized_when_a_size_goal_needs_it():
    a = recommend(Situation("edge", size_mb=4, size_goal_mb=1.5))
    assert a.quantize and "static" in methods(a)


def test_cpu_ladder_for_transformers_starts_dynamic():
    a = recommend(Situation("cpu", size_mb=400, arch="transformer"))
    assert methods(a) == ["dynamic", "static", "qat", "mixed"]


def test_cpu_ladder_for_cnns_starts_static():
    a = recommend(Situation("cpu", size_mb=100, arch="cnn"))
    assert methods(a) == ["static", "qat", "mixed"] and any("convolutions" in n for n in a.notes)


def test_edge_adds_onnx_runtime():
    assert methods(recommend(Situation("edge", size_mb=100, arch="rnn"))) == \
        ["dynamic", "static", "onnx_static", "qat", "mixed"]


def test_gpu_starts_with_fp16():
    a = recommend(Situation("gpu", size_mb=400, arch="transformer"))
    assert methods(a)[:2] == ["cast", "static"] and "FP16" in a.steps[0].why


def test_int4_only_for_extreme_memory_limits():
    assert "int4" not in methods(recommend(Situation("cpu", size_mb=100, size_goal_mb=50)))  # INT8 reaches it
    assert "int4" in methods(recommend(Situation("cpu", size_mb=100, size_goal_mb=20)))  # 100/4 > 20
    assert "int4" in methods(recommend(Situation("extreme-edge", size_mb=100)))


def test_tight_tolerance_plans_qat():
    a = recommend(Situation("cpu", tolerance_pts=0.3, size_mb=100))
    assert any("tight tolerance" in n for n in a.notes)


def test_llm_gets_weight_only_methods():
    a = recommend(Situation("gpu", size_mb=300, arch="llm"))
    assert methods(a) == ["rtn", "gptq"] and "outlier" in a.steps[0].why
    assert "weight-only" in a.summary and any("FP16" in n for n in a.notes)


# -- explaining runs ---------------------------------------------------------------------------


def classic_results(variants, winner="static"):
    base = {"metric": 98.0, "latency_ms_median": 2.1, "size_bytes": 4_000_000, "nonfinite": 0}
    return {"kind": "classic", "baseline": {"result": base}, "select": {"max_loss_pts": 1.0},
            "variants": [{"name": n, "method": m, "result": {"metric": acc, "latency_ms_median": lat,
                                                             "size_bytes": size, "nonfinite": nf}}
                         for n, m, acc, lat, size, nf in variants],
            "winner": {"name": winner, "reason": "fastest"}}


def test_explain_classic_branches():
    lines = explain(classic_results([
        ("static", "static", 97.6, 1.0, 1_000_000, 0),   # 2.1x at 0.4 pts: deploy
        ("dyn", "dynamic", 97.5, 2.0, 3_000_000, 0),     # no real speed-up
        ("big", "cast", 98.0, 2.0, 5_000_000, 0),        # larger on disk than the baseline
        ("slow", "onnx_static", 97.9, 4.2, 1_000_000, 0),  # slower at batch 1
        ("over", "cast", 96.5, 1.0, 2_000_000, 0),       # 1.5 pts > tolerance 1
        ("qatish", "mixed", 95.5, 1.0, 1_000_000, 0),    # 2.5 pts: try QAT
        ("bad", "qat", 90.0, 1.0, 1_000_000, 0),         # 8 pts: reconsider
        ("nan", "mixed", 10.0, 1.0, 1_000_000, 5),
    ]))
    text = "\n".join(lines)
    assert "static: gave 2.1x at batch 1 at 0.4 pts loss, 4.0x smaller: deploy" in text
    assert "dyn: gave 1.1x at batch 1 at 0.5 pts loss, 1.3x smaller: little to gain" in text
    assert "slow: 0.1 pts loss but 2.0x slower at batch 1" in text
    assert "over: gave 2.1x at batch 1 at 1.5 pts loss" in text and "over your 1 pts tolerance" in text
    assert "qatish: lost 2.5 pts" in text and "try QAT" in text
    assert "bad: lost 8.0 pts" in text and "reconsider" in text
    assert "nan: NaN/Inf" in text
    assert "big: gave 1.1x at batch 1 at 0.0 pts loss, 1.2x larger: little to gain" in text
    assert "QAT did not recover" not in text  # static lost only 0.4 pts
    assert lines[-1].startswith("recommendation: deploy static")


def test_explain_qat_recovery():
    text = "\n".join(explain(classic_results([("s", "static", 92.0, 1.0, 1, 0), ("q", "qat", 97.0, 1.0, 1, 0)])))
    assert "QAT recovered 5.0 of the 6.0 pts static lost" in text
    text = "\n".join(explain(classic_results([("s", "static", 92.0, 1.0, 1, 0), ("q", "qat", 91.0, 1.0, 1, 0)],
                                             winner=None)))
    assert "QAT did not recover" in text and text.endswith("recommendation: keep the baseline (fastest)")


def llm_results(variants):
    return {"baseline": {"ppl": 36.0, "latency": {"ttft_ms_median": 100.0}}, "select": {"max_ppl_increase_pct": 2.0},
            "variants": [{"name": n, "method": m, "result": {"ppl": p, "latency": {"ttft_ms_median": 50.0}},
                          "quantize": {"config": cfg}} for n, m, p, cfg in variants],
            "winner": {"name": None, "reason": "none within 2 %"}}


def test_explain_llm_activation_quantization_destroyed_it():
    lines = explain(llm_results([
        ("int8-dyn", "int8_dynamic", 120.0, {}),
        ("rtn-w8", "rtn", 36.2, {"bits": 8}),
        ("rtn-w4", "rtn", 38.0, {"bits": 4}),
        ("rtn-w2", "rtn", 90.0, {"bits": 2}),
    ]))
    text = "\n".join(lines)
    assert "int8-dyn: INT8 quantization of activations destroyed this LLM (perplexity 36.0 → 120.0, +233 %)" in text
    assert "use weight-only methods" in text
    assert "rtn-w8: perplexity +0.56 %, 2.0x first-token latency: deploy" in text
    assert "rtn-w4: perplexity +5.6 %, 2.0x first-token latency: over your 2 % tolerance" in text
    # weight-only but broken: a different diagnosis, not the activation one
    assert "rtn-w2: perplexity +150.0 %: too lossy" in text
    assert lines[-1] == "recommendation: keep the baseline (none within 2 %)"


def test_quantizes_activations():
    assert quantizes_activations("int8_dynamic") and quantizes_activations("w8a8")
    assert quantizes_activations("whatever", {"activations": "int8"})
    assert not quantizes_activations("rtn", {"bits": 4}) and not quantizes_activations("gptq")


def test_cli_advise(tmp_path):
    r = CliRunner().invoke(app, ["advise", "--target", "cpu", "--size-mb", "40", "--arch", "transformer"])
    assert r.exit_code == 0 and "1. dynamic" in r.output
    r = CliRunner().invoke(app, ["advise", "--target", "moon"])
    assert r.exit_code == 2 and "--target: 'moon' is not allowed" in r.output
    (tmp_path / "results.json").write_text(json.dumps(classic_results([("static", "static", 97.6, 1.0, 1, 0)])))
    r = CliRunner().invoke(app, ["advise", "--run", str(tmp_path)])
    assert r.exit_code == 0 and "static: gave 2.1x" in r.output
    r = CliRunner().invoke(app, ["advise", "--run", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no readable results.json" in r.output


def test_read_results_refuses_other_json(tmp_path):
    import pytest

    from llmquant.advise import read_results
    from llmquant.errors import UserError

    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="not the results.json of an llmquant run"):
        read_results(tmp_path / "x.json")
