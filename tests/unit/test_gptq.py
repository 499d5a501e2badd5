"""GPTQ on the tiny Llama: the sequential loop against a straightforward reference, the
checkpoint against our loader, robustness, the recipe end to end, and resume after a crash."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from llmquant.errors import UserError
from llmquant.formats.load import load_checkpoint
from llmquant.quantize import sequential
from llmquant.quantize.base import QuantizeContext
from llmquant.quantize.gptq.quantizer import GPTQQuantizer, solve_layer
from llmquant.quantize.gptq.gptq_math import accumulate_hessian, gptq_quantize
from llmquant.quantize.targets import LayerSettings
from llmquant.quantize.gptq.config import GPTQVariant, solve_dtype
from tests.conftest import load_fp32

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GROUPS = [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
          ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)]


@pytest.fixture(scope="module")
def calib(tiny_calib):
    return tiny_calib


def quantize(model_dir, calib, out, work_dir=None, **kw):
    ids, tok = calib
    model = load_fp32(model_dir)
    variant = GPTQVariant(name="g", method="gptq", **({"bits": 4, "group_size": 32, "save_dtype": "float32"} | kw))
    summary = GPTQQuantizer().quantize(model, variant, ids, out, QuantizeContext(tokenizer=tok, work_dir=work_dir))
    return model, summary


def reference_sequential(model, ids, variant, batch_size):
    """True-sequential GPTQ the way the reference scripts do it: for every group, run the whole
    block over all batches collecting the group's Hessian, quantize it, and finally rerun the
    block to get the next block's inputs. Written independently of sequential.py."""
    layers = model.model.layers
    captured = []

    def stop(module, args, kwargs):
        captured.append((args[0], kwargs))
        raise StopIteration

    h = layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch_size):
            try:
                model(input_ids=ids[s:s + batch_size], use_cache=False)
            except StopIteration:
                pass
    h.remove()
    hidden = [c[0] for c in captured]
    kwargs = [c[1] for c in captured]
    out = {}
    for i, block in enumerate(layers):
        groups = GROUPS if variant.true_sequential else [sum(GROUPS, ())]
        for group in groups:
            Hs = {}

            def hook(module, args, name):
                Hs[name] = accumulate_hessian(*Hs.get(name, (None, 0)), args[0], solve_dtype(variant.precision, "cpu"))

            hs = [block.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in group]
            with torch.no_grad():
                for x, kw in zip(hidden, kwargs):
                    block(x, **kw)
            for hh in hs:
                hh.remove()
            for n in group:
                lin = block.get_submodule(n)
                res = gptq_quantize(lin.weight.data, Hs[n][0], variant.bits, variant.group_size, variant.sym,
                                    desc_act=variant.desc_act, act_group_aware=variant.act_group_aware,
                                    grid=variant.grid)
                lin.weight.data = res.weight.dequantize()
                out[f"model.layers.{i}.{n}"] = res.weight
        with torch.no_grad():
            hidden = [block(x, **kw) for x, kw in zip(hidden, kwargs)]
    return out


@pytest.mark.parametrize("true_sequential", [True, False])
def test_loop_matches_straightforward_reference(tmp_path, tiny_model_dir, calib, true_sequential):
    variant = GPTQVariant(name="g", method="gptq", bits=4, group_size=32, true_sequential=true_sequential)
    ids = calib[0].input_ids
    ref = reference_sequential(load_fp32(tiny_model_dir), ids, variant, batch_size=5)
    from llmquant.quantize.gptq.quantizer import GPTQHandler

    model = load_fp32(tiny_model_dir)
    settings = {f"model.layers.{i}.{n}": LayerSettings(4, 32, True) for i in range(3) for n in LINEARS}
    handler = GPTQHandler(model, variant, settings, "k")
    sequential.run_sequential(model, ids, handler, sequential.SequentialOptions(batch_size=5, staged=true_sequential))
    assert set(handler.layers) == set(ref)
    for name, w in ref.items():
        mine = handler.int_weight(name)
        mismatch = (mine.q != w.q).float().mean().item()
        assert mismatch < 0.002, name  # same algorithm, same batches: at most float-noise ties differ
        torch.testing.assert_close(mine.dequantize(), w.dequantize(), atol=0.02, rtol=0)


def test_groups_are_discovered_from_calls(tiny_model_dir, calib):
    model = load_fp32(tiny_model_dir)
    block = model.model.layers[1]
    inputs, kwargs = sequential.capture_inputs(model, model.model.layers[0], calib[0].input_ids, 4, torch.device("cpu"))
    assert len(inputs) == 3 and inputs[0].shape == (4, 64, 64)
    run = sequential.BlockRun(1, "model.layers.1", block, [], inputs, kwargs, torch.device("cpu"))
    targets = {f"model.layers.1.{n}": block.get_submodule(n) for n in LINEARS}
    groups = sequential.probe_groups(run, targets)
    assert [tuple(n.removeprefix("model.layers.1.") for n in g.names) for g in groups] == GROUPS
    assert all(g.called for g in groups)


def test_act_order_checkpoint_round_trips_through_our_loader(tmp_path, tiny_model_dir, calib):
    out = tmp_path / "ckpt"
    model, summary = quantize(tiny_model_dir, calib, out, desc_act=True, bits=3, sym=False)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["desc_act"] is True and qc["static_groups"] is False and qc["true_sequential"] is True
    assert qc["damp_percent"] == 0.01 and qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq"
    assert json.loads((out / "quantize_config.json").read_text())["desc_act"] is True
    tensors = load_file(str(out / "model.safetensors"))
    g_idx = tensors["model.layers.0.mlp.down_proj.g_idx"]
    assert (g_idx[1:] < g_idx[:-1]).any()  # act-order: not monotonic, rows stay in input order
    assert sorted(g_idx.tolist()) == [i // 32 for i in range(128)]
    loaded, _, info = load_checkpoint(out, "float32", "cpu")
    assert info.desc_act is True
    x = calib[0].input_ids[:2]
    with torch.no_grad():  # the quantizer left the dequantized weights in `model`
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
    rows = summary.layers
    assert len(rows) == 21 and all(0 < r["output_error"] < 0.5 and r["seconds"] >= 0 for r in rows)
    # the weight error against the original weights (it once compared the weight with itself: 0.0)
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    quantized = dict(model.named_parameters())
    for r in rows:
        w = original[r["module"] + ".weight"].float()
        expected = float((w - quantized[r["module"] + ".weight"].float()).norm() / w.norm())
        assert r["rel_error"] == pytest.approx(expected, rel=1e-4) and r["rel_error"] > 0.01


def test_static_groups_checkpoint_has_monotonic_g_idx(tmp_path, tiny_model_dir, calib):
    out = tmp_path / "ckpt"
    model, _ = quantize(tiny_model_dir, calib, out, desc_act=True, static_groups=True)
    g_idx = load_file(str(out / "model.safetensors"))["model.layers.2.self_attn.o_proj.g_idx"]
    assert g_idx.tolist() == [i // 32 for i in range(64)]
    loaded, _, _ = load_checkpoint(out, "float32", "cpu")
    x = calib[0].input_ids[:1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)


def test_not_positive_definite_is_retried_with_a_warning(caplog):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 4, generator=g) @ torch.randn(4, 32, generator=g)  # rank 4: H is singular
    H, _ = accumulate_hessian(None, 0, X)
    H -= 0.05 * torch.diagonal(H).mean() * torch.eye(32)  # indefinite beyond 1 % damping
    variant = GPTQVariant(name="g", method="gptq", group_size=16)
    with caplog.at_level(logging.WARNING, logger="llmquant"):
        out, damp = solve_layer("model.layers.7.mlp.up_proj", torch.randn(16, 32, generator=g), H,
                                LayerSettings(4, 16, True), variant)
    assert damp == pytest.approx(0.1)
    assert "model.layers.7.mlp.up_proj" in caplog.text and "retrying with damp_percent 0.1" in caplog.text
    assert torch.isfinite(out.weight.dequantize()).all()


def test_nan_inputs_stop_with_the_layer_name(tmp_path, tiny_model_dir, calib):
    ids, tok = calib
    model = load_fp32(tiny_model_dir)
    with torch.no_grad():  # block 1's MLP input gets a NaN channel
        model.model.layers[1].post_attention_layernorm.weight[5] = float("nan")
    variant = GPTQVariant(name="g", method="gptq", group_size=32)
    with pytest.raises(UserError, match=r"model\.layers\.1\.mlp\.gate_proj: its inputs contain NaN or Inf.*calibration.seqlen"):
        GPTQQuantizer().quantize(model, variant, ids, tmp_path / "out", QuantizeContext(tokenizer=tok))
    assert not (tmp_path / "out").exists()


def test_tiny_recipe_end_to_end_with_gptq(tiny_recipe, board_path):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    path = tiny_recipe(variants="""
  - {name: rtn3, method: rtn, bits: 3, group_size: 32}
  - {name: gptq3, method: gptq, bits: 3, group_size: 32}
  - {name: gptq4-act, method: gptq, bits: 4, group_size: 32, desc_act: true, true_sequential: false}
""", extra="""calibration:
  dataset: {source: "builtin:pydoc", split: train}
  n_samples: 16
  seqlen: 128
""")
    summary = run(load_recipe(path))
    ppl = {o.name: o.result.ppl for o in summary.variants}
    assert ppl["gptq3"] < ppl["rtn3"]
    assert ppl["gptq4-act"] < ppl["rtn3"]
    manifest = json.loads((summary.run_dir / "variants" / "gptq3" / "manifest.json").read_text())
    rows = manifest["summary"]["layers"]
    assert len(rows) == 21 and {"output_error", "seconds", "module"} <= set(rows[0])
    assert manifest["summary"]["solved_blocks"] == [0, 1, 2]


def test_resume_after_a_crash_is_bit_identical_and_skips_finished_blocks(tmp_path, tiny_model_dir, calib, monkeypatch,
                                                                         crash_after_block, caplog):
    _, whole = quantize(tiny_model_dir, calib, tmp_path / "whole", desc_act=True)

    work = tmp_path / "work"
    with crash_after_block(1):
        quantize(tiny_model_dir, calib, tmp_path / "resumed", work_dir=work, desc_act=True)
    assert sorted(json.loads((work / "manifest.json").read_text())["blocks"]) == ["0", "1"]

    solved = []
    from llmquant.quantize.gptq.quantizer import GPTQHandler

    real_solve = GPTQHandler.solve
    monkeypatch.setattr(GPTQHandler, "solve", lambda self, g: (solved.extend(g.names), real_solve(self, g)))
    with caplog.at_level(logging.INFO, logger="llmquant"):
        _, resumed = quantize(tiny_model_dir, calib, tmp_path / "resumed", work_dir=work, desc_act=True)
    assert resumed.details["resumed_blocks"] == [0, 1] and resumed.details["solved_blocks"] == [2]
    assert solved and all(n.startswith("model.layers.2.") for n in solved)
    assert "blocks 0-1 were solved by an earlier run" in caplog.text
    a = (tmp_path / "whole" / "model.safetensors").read_bytes()
    b = (tmp_path / "resumed" / "model.safetensors").read_bytes()
    assert a == b
    assert [r["module"] for r in resumed.layers] == [r["module"] for r in whole.layers]

    # a third run finds every block done: nothing solved, nothing forwarded
    solved.clear()
    _, again = quantize(tiny_model_dir, calib, tmp_path / "again", work_dir=work, desc_act=True)
    assert again.details["resumed_blocks"] == [0, 1, 2] and again.details["solved_blocks"] == [] and not solved
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == a

    # other settings do not reuse the state
    _, other = quantize(tiny_model_dir, calib, tmp_path / "other", work_dir=work, desc_act=False)
    assert other.details["resumed_blocks"] == []


def test_overrides_skip_and_other_bits(tmp_path, tiny_model_dir, calib):
    out = tmp_path / "ckpt"
    model, summary = quantize(tiny_model_dir, calib, out, overrides=[
        {"pattern": r"layers\.2\.self_attn\.q_proj", "skip": True},
        {"pattern": r"mlp\.down_proj", "bits": 8, "group_size": 64}])
    by = {r["module"]: r for r in summary.layers}
    assert "model.layers.2.self_attn.q_proj" not in by and len(by) == 20
    assert by["model.layers.0.mlp.down_proj"]["bits"] == 8 and by["model.layers.0.mlp.up_proj"]["bits"] == 4
    assert by["model.layers.0.mlp.down_proj"]["output_error"] < by["model.layers.0.mlp.up_proj"]["output_error"]
    loaded, _, _ = load_checkpoint(out, "float32", "cpu")
    assert isinstance(loaded.model.layers[2].self_attn.q_proj, torch.nn.Linear)
    assert loaded.model.layers[1].mlp.down_proj.bits == 8
    x = calib[0].input_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)


def test_quantized_lm_head_calibrates_on_the_final_norm(tmp_path, tiny_model_untied_dir, calib):
    from llmquant.formats.qlinear import QuantLinear

    out = tmp_path / "ckpt"
    model, summary = quantize(tiny_model_untied_dir, calib, out, bits=8, quantize_lm_head=True)
    head = summary.layers[-1]
    assert head["module"] == "lm_head" and 0 < head["output_error"] < 0.05
    loaded, _, _ = load_checkpoint(out, "float32", "cpu")
    assert isinstance(loaded.lm_head, QuantLinear)
    x = calib[0].input_ids[:2]
    with torch.no_grad():  # 8-bit head: logits stay close to those of the quantized blocks + float head
        diff = (loaded(x).logits - model(x).logits).abs().max()
    assert 0 < diff < 0.05


def test_bounded_parking_gives_bit_identical_results(tiny_model_dir, calib):
    """Batches that are not parked stop once observed and run again per group: same numbers."""
    from llmquant.quantize.gptq.quantizer import GPTQHandler

    variant = GPTQVariant(name="g", method="gptq", bits=3, group_size=32, sym=False)
    settings = {f"model.layers.{i}.{n}": LayerSettings(3, 32, False) for i in range(3) for n in LINEARS}
    results = []
    for max_parked in (None, 1, 0):
        model = load_fp32(tiny_model_dir)
        handler = GPTQHandler(model, variant, settings, "k")
        res = sequential.run_sequential(model, calib[0].input_ids, handler, sequential.SequentialOptions(
            batch_size=5, staged=True, keep_final=True, max_parked=max_parked))
        results.append((handler.layers, res.hidden))
    (ref_layers, ref_hidden), others = results[0], results[1:]
    for layers, hidden in others:
        assert set(layers) == set(ref_layers)
        for name, tensors in ref_layers.items():
            assert all(torch.equal(tensors[k], layers[name][k]) for k in tensors), name
        assert all(torch.equal(a, b) for a, b in zip(ref_hidden, hidden))
