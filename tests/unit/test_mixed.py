"""method mixed: config validation, allocation units, the sensitivity math against direct output
errors, the sensitivity pass on the tiny Llama (monotone in bits, cached), and the checkpoint it
writes (each module stored at its allocated setting, `dynamic` rules that vLLM's fused names match)."""

import json
import re

import pytest
import torch
from pydantic import ValidationError

from llmquant.errors import UserError
from llmquant.formats.gptq_v1 import shape_problem
from llmquant.formats.load import load_checkpoint
from llmquant.formats.modules import checkpoint_modules, gptq_dynamic
from llmquant.inspect import inspect_path
from llmquant.quantize.base import QuantizeContext
from llmquant.quantize.gptq.gptq_math import accumulate_hessian
from llmquant.quantize.mixed import assign, sensitivity as sens
from llmquant.quantize.mixed.allocate import bits_per_weight, gptq_bytes
from llmquant.quantize.mixed.config import MixedVariant
from llmquant.quantize.mixed.quantizer import MixedQuantizer
from llmquant.quantize.mixed.units import check_model, make_units, model_units
from tests.conftest import load_fp32


def mixed(**kw) -> MixedVariant:
    return MixedVariant(**({"name": "m", "method": "mixed", "budget": {"bits": 4.5}, "save_dtype": "float32",
                            "candidate_group_sizes": [32, 64]} | kw))


# -- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget, words", [
    ({}, "give exactly one of bits, size_mb, max_ppl_increase_pct, max_kld"),
    ({"bits": 4, "size_mb": 10}, "(got bits, size_mb)"),
    ({"bits": 1.5}, "between 2 and 8"),
])
def test_budget_is_exactly_one_valid_bound(budget, words):
    with pytest.raises(ValidationError) as e:
        mixed(budget=budget)
    assert words in str(e.value)


def test_overrides_may_only_skip():
    assert mixed(overrides=[{"pattern": "lm_head", "skip": True}]).overrides[0].skip
    with pytest.raises(ValidationError, match="may only skip"):
        mixed(overrides=[{"pattern": "down_proj", "bits": 8}])


def test_quality_bound_and_with_bits():
    v = mixed(budget={"max_kld": 0.05})
    assert v.quality_bound == ("max_kld", 0.05)
    w = v.with_bits(3.25)
    assert w.quality_bound is None and w.budget.bits == 3.25 and w.candidate_group_sizes == [32, 64]
    assert mixed().quality_bound is None


# -- units ----------------------------------------------------------------------------------------

def test_units_fuse_qkv_and_gate_up_and_filter_settings():
    p = "model.layers.0."
    shapes = {p + "self_attn.q_proj": (96, 96), p + "self_attn.k_proj": (96, 32), p + "self_attn.v_proj": (96, 32),
              p + "self_attn.o_proj": (96, 96), p + "mlp.gate_proj": (96, 160), p + "mlp.up_proj": (96, 160),
              p + "mlp.down_proj": (160, 96)}
    units = make_units(shapes, [3, 4], [32, 64])
    assert [u.name for u in units] == [p + "self_attn.q_proj+k_proj+v_proj", p + "self_attn.o_proj",
                                       p + "mlp.gate_proj+up_proj", p + "mlp.down_proj"]
    assert units[0].out_features == 160 and units[0].fused == p + "self_attn.qkv_proj"
    assert units[2].fused == p + "mlp.gate_up_proj" and units[1].fused is None
    # 64 divides neither 96 nor 160; every kept setting stores every member
    for u in units:
        assert u.settings and all(g == 32 for _, g in u.settings)
        assert all(shape_problem(i, o, b, g) is None for b, g in u.settings for i, o in u.shapes)


def test_check_model_names_unreachable_budget(tiny_model_dir):
    model = load_fp32(tiny_model_dir)
    assert check_model(mixed(), "llama", model) is None
    msg = check_model(mixed(budget={"bits": 2.0}, candidate_bits=[4, 8]), "llama", model)
    assert msg.startswith("budget.bits: 2.000 bits per weight is below the smallest") and "\n" not in msg
    msg = check_model(mixed(candidate_group_sizes=[48]), "llama", model)
    assert "no candidate can store" in msg and "group size dividing" in msg


# -- the math -------------------------------------------------------------------------------------

def test_noise_to_signal_is_the_relative_output_error():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 48, generator=g)
    W = torch.randn(20, 48, generator=g)
    W_hat = W + 0.05 * torch.randn(20, 48, generator=g)
    H, _ = accumulate_hessian(None, 0, X[None])
    err, signal = sens.noise_to_signal(W, W_hat, H.double())
    direct = ((X @ (W - W_hat).T) ** 2).sum() / ((X @ W.T) ** 2).sum()  # outputs, no Hessian
    assert err / signal == pytest.approx(float(direct), rel=1e-5)


def test_unit_entries_sum_members():
    units = make_units({"a.q_proj": (64, 64), "a.k_proj": (64, 32), "a.o_proj": (64, 64)}, [4], [32])
    rows = [{"module": m, "costs": [{"bits": 4, "group_size": 32, "error": e, "signal": 10.0, "seconds": 0.5}]}
            for m, e in (("a.q_proj", 1.0), ("a.k_proj", 2.0), ("a.o_proj", 3.0))]
    qk, o = sens.unit_entries(units, rows)
    assert qk["options"][0]["cost"] == pytest.approx(0.3) and qk["options"][0]["seconds"] == 1.0
    assert qk["options"][0]["bytes"] == gptq_bytes(64, 64, 4, 32) + gptq_bytes(64, 32, 4, 32)
    assert o["options"][0]["cost"] == pytest.approx(0.3) and qk["modules"] == ["a.q_proj", "a.k_proj"]
    # weighting fisher: the cost is the members' Fisher-weighted sum; the NSR stays beside it
    for r, f in zip(rows, (0.01, 0.02, 0.5)):
        r["costs"][0]["fisher"] = f
    qk, o = sens.unit_entries(units, rows, "fisher")
    assert qk["options"][0]["cost"] == pytest.approx(0.03) and qk["options"][0]["nsr"] == pytest.approx(0.3)
    assert o["options"][0]["cost"] == pytest.approx(0.5)


def test_base_setting_avoids_marlin_when_any_layer_cannot_run_it():
    assert assign.base_setting([(4, 128), (4, 128), (8, 128)], True) == (4, 128)
    # a 3-bit layer: vLLM would pick gptq_marlin from a 4-bit base and fail on it
    assert assign.base_setting([(4, 128), (4, 128), (3, 128)], True) == (3, 128)


def test_unit_pattern_matches_split_and_fused_names_only():
    mods = ["model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.v_proj"]
    pat = assign.unit_pattern(mods, assign.fused_name(mods))
    for name in (*mods, "model.layers.3.self_attn.qkv_proj", "model.model.layers.3.self_attn.q_proj"):
        assert re.match(".*" + pat, name) and re.search(pat, name), name
    for name in ("model.layers.13.self_attn.q_proj", "model.layers.3.self_attn.o_proj",
                 "model.layers.3.self_attn.q_proj.bias"):
        assert not re.search(pat, name), name


# -- on the tiny Llama ----------------------------------------------------------------------------

def run_sensitivity(model_dir, calib, tmp_path, **kw):
    ids, tok = calib
    ctx = QuantizeContext(tokenizer=tok, model_key="tiny")
    return sens.sensitivity(load_fp32(model_dir), mixed(**kw), ids, ctx, tmp_path)


@pytest.mark.parametrize("estimate", ["rtn", "gptq"])
def test_sensitivity_falls_with_bits_and_is_cached(tiny_model_dir, tiny_calib, tmp_path, monkeypatch, estimate):
    path, table = run_sensitivity(tiny_model_dir, tiny_calib, tmp_path, estimate=estimate)
    assert path.exists() and json.loads(path.read_text()) == table
    model = load_fp32(tiny_model_dir)
    assert [e["name"] for e in table["layers"]] == [u.name for u in model_units(model, mixed())]
    for e in table["layers"]:
        cost = {(o["bits"], o["group_size"]): o["cost"] for o in e["options"]}
        for g in (32, 64):
            if (2, g) in cost:
                assert cost[(2, g)] > cost[(3, g)] > cost[(4, g)] > cost[(8, g)] > 0, e["name"]
    # an RTN cost recomputed independently: fake-quantize, compare outputs on the calibration data
    if estimate == "rtn":
        from llmquant.quantize.grid import dequantize_groups, group_index, quantize_rtn

        down = next(e for e in table["layers"] if e["name"] == "model.layers.0.mlp.down_proj")
        W = model.model.layers[0].mlp.down_proj.weight.detach()
        q, s, z = quantize_rtn(W, 4, 32, True)
        W_hat = dequantize_groups(q, s, z, group_index(W.shape[1], 32))
        xs = []
        h = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: xs.append(a[0]))
        with torch.no_grad():
            model(input_ids=tiny_calib[0].input_ids)
        h.remove()
        X = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])
        expect = float(((X @ (W - W_hat).T) ** 2).sum() / ((X @ W.T) ** 2).sum())
        got = next(o["nsr"] for o in down["options"] if (o["bits"], o["group_size"]) == (4, 32))
        assert got == pytest.approx(expect, rel=1e-3)
    # the second call reads the file: the sequential loop must not run
    monkeypatch.setattr(sens, "run_sequential", lambda *a, **k: pytest.fail("sensitivities recomputed"))
    again_path, again = run_sensitivity(tiny_model_dir, tiny_calib, tmp_path, estimate=estimate)
    assert again_path == path and again == table


def test_mixed_checkpoint_stores_the_allocation(tiny_model_dir, tiny_calib, tmp_path):
    ids, tok = tiny_calib
    variant = mixed(budget={"bits": 4.5})
    out = tmp_path / "ckpt"
    ctx = QuantizeContext(tokenizer=tok, cache_dir=tmp_path / "cache", model_key="tiny")
    model = load_fp32(tiny_model_dir)
    result = MixedQuantizer().quantize(model, variant, ids, out, ctx)
    alloc = result.details["allocation"]
    assert alloc["total_bytes"] <= alloc["budget_bytes"] and alloc["average_bits"] <= 4.5
    assert len({(u["bits"], u["group_size"]) for u in alloc["units"]}) > 1  # actually mixed
    table = json.loads((tmp_path / "cache").joinpath(alloc["sensitivity"].rsplit("/", 1)[-1]).read_text())
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    mods, _ = checkpoint_modules(out, "gptq", qc)
    stored = {m.name: (m.bits, m.group_size) for m in mods}
    packed = 0
    for entry, u in zip(table["layers"], alloc["units"]):
        for name in entry["modules"]:
            assert stored[name] == (u["bits"], u["group_size"]), name  # read back from the tensors
            # the dynamic rules give the same setting by the split name and by vLLM's fused name
            for n in (name, assign.fused_name(entry["modules"]) or name):
                rule = gptq_dynamic(n, qc.get("dynamic")) or {}
                assert (rule.get("bits", qc["bits"]), rule.get("group_size", qc["group_size"])) == stored[name], n
        packed += sum(gptq_bytes(i, o, u["bits"], u["group_size"]) for i, o in
                      [(m.in_features, m.out_features) for m in mods if m.name in entry["modules"]])
    assert packed == alloc["total_bytes"]
    n = sum(e["in_features"] * e["out_features"] for e in table["layers"])
    assert bits_per_weight(packed, n) == pytest.approx(alloc["average_bits"], abs=1e-4)
    # our loader reads it: the same logits as the quantizer's dequantized weights left in `model`
    loaded, _, _ = load_checkpoint(out, "float32", "cpu")
    x = ids.input_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
    # inspect: every allocated setting, and no vLLM blocker (fused layers share one setting; a
    # 2/3-bit layer makes the base non-marlin)
    report = inspect_path(out)
    assert report.bits == sorted({u["bits"] for u in alloc["units"]})
    blockers = [f.code for f in report.vllm.findings if f.severity == "blocker"]
    assert blockers == [], blockers


def test_bad_budget_is_one_line_exit_2(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from llmquant.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: t
model: {{source: {tiny_model_dir}}}
calibration: {{dataset: {{source: "builtin:pydoc", split: train}}, n_samples: 4, seqlen: 32}}
eval: {{dataset: {{source: "builtin:pydoc", split: test}}, seqlen: 64, max_windows: 2}}
variants:
  - {{name: m, method: mixed, budget: {{bits: 9}}}}
""")
    res = CliRunner().invoke(app, ["validate", str(recipe)], catch_exceptions=False)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "variants[0].budget.bits" in errors[0] and "between 2 and 8" in errors[0] and str(recipe) in errors[0]


def test_quality_bound_needs_the_run(tiny_model_dir, tiny_calib, tmp_path):
    ids, tok = tiny_calib
    with pytest.raises(UserError, match="budget.max_ppl_increase_pct is a quality bound"):
        MixedQuantizer().quantize(load_fp32(tiny_model_dir), mixed(budget={"max_ppl_increase_pct": 2}), ids,
                                  tmp_path / "c", QuantizeContext(tokenizer=tok, cache_dir=tmp_path, model_key="t"))


def test_quality_search_end_to_end(tiny_recipe, board_path):
    """A quality bound in a recipe: the run measures attempts until the bracket closes, keeps the
    smallest that meets it, lists every attempt, and a rerun reuses them all."""
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe
    from llmquant.winner import delta_pct

    path = tiny_recipe(variants="""
  - {name: w8, method: rtn, bits: 8, group_size: 32}
  - {name: mx, method: mixed, budget: {max_ppl_increase_pct: 3}, candidate_group_sizes: [32], estimate: rtn,
     max_attempts: 3}
""", extra="""calibration:
  dataset: {source: "builtin:pydoc", split: train}
  n_samples: 8
  seqlen: 128
""")
    summary = run(load_recipe(path))
    out = {o.name: o for o in summary.variants}
    mx, base = out["mx"], summary.baseline.ppl
    search = mx.summary["search"]
    assert 1 <= len(search["attempts"]) <= 3
    for a in search["attempts"]:  # each attempt is a variant step of its own, with its own result
        r = json.loads((summary.run_dir / "variants" / a["name"] / "result.json").read_text())["result"]
        assert delta_pct(r["ppl"], base) == pytest.approx(a["value"], rel=1e-6)
    met = [a for a in search["attempts"] if a["value"] <= 3]
    kept = min(met, key=lambda a: a["bits"]) if met else max(search["attempts"], key=lambda a: a["bits"])
    assert search["met"] == bool(met) and search["kept_bits"] == kept["bits"]
    assert delta_pct(mx.result.ppl, base) == pytest.approx(kept["value"], rel=1e-6)
    assert mx.summary["allocation"]["average_bits"] <= kept["bits"] + 1e-9
    again = {o.name: o for o in run(load_recipe(path)).variants}["mx"]
    assert again.summary["search"] == search and not again.quantized_now and not again.evaluated_now


def test_search_attempts_may_exceed_the_recipes_8_bits():
    v = mixed(budget={"max_ppl_increase_pct": 1}).with_bits(8.5)
    assert v.budget.bits == 8.5 and v.budget.kind == "bits" and v.quality_bound is None
