"""AWQ on tiny models: folding scales is a no-op on the float model for every mapping kind and
family, the checkpoint is AWQ GEMM as vLLM reads it (checked with a test-side unpacker) and loads
with our loader, the recipe end to end, resume from a saved search, overrides, bad input."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from llmquant.errors import UserError
from llmquant.formats.load import load_checkpoint
from llmquant.quantize.awq import awq_arch
from llmquant.quantize.awq.quantizer import AWQHandler, AWQQuantizer, fold_scale
from llmquant.quantize.base import QuantizeContext
from llmquant.quantize.awq.config import AWQVariant
from tests.conftest import load_fp32, write_recipe

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@pytest.fixture(scope="module")
def calib(tiny_calib):
    return tiny_calib


def quantize(model_dir, calib, out, work_dir=None, **kw):
    ids, tok = calib
    model = load_fp32(model_dir)
    variant = AWQVariant(name="a", method="awq", **({"bits": 4, "group_size": 32, "save_dtype": "float32"} | kw))
    summary = AWQQuantizer().quantize(model, variant, ids, out, QuantizeContext(tokenizer=tok, work_dir=work_dir))
    return model, summary


def tiny_family(kind: str):
    """A randomly initialised 2-block model of each supported family (MHA where v -> o can fold)."""
    import transformers as tf

    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=128, max_position_embeddings=256)
    cfg = {
        "llama": lambda: tf.LlamaConfig(num_key_value_heads=4, **common),
        "mistral": lambda: tf.MistralConfig(num_key_value_heads=2, **common),
        "qwen2": lambda: tf.Qwen2Config(num_key_value_heads=4, **common),
        "qwen3": lambda: tf.Qwen3Config(num_key_value_heads=2, head_dim=16, **common),
    }[kind]()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so folding them is really exercised
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3"])
def test_folding_scales_is_a_no_op_on_the_float_model(kind):
    model = tiny_family(kind)
    assert awq_arch.family_for(model.config.model_type) is awq_arch.LLAMA_LIKE
    x = torch.randint(0, 128, (2, 40))
    with torch.no_grad():
        before = model(x).logits
    g = torch.Generator().manual_seed(1)
    folded = set()
    for i, block in enumerate(model.model.layers):
        for r in awq_arch.resolve(awq_arch.LLAMA_LIKE, block, f"model.layers.{i}"):
            if r.foldable:
                s = torch.exp(torch.randn(r.linears[0].in_features, generator=g))  # scales over ~2 decades
                fold_scale(r.prev, r.linears, s)
                folded.add(r.mapping.prev)
    with torch.no_grad():
        after = model(x).logits
    mha = kind in ("llama", "qwen2")
    assert folded == {"input_layernorm", "post_attention_layernorm", "mlp.up_proj"} | ({"self_attn.v_proj"} if mha else set())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, tiny_family(kind).model.layers[0].input_layernorm.weight)


def test_gqa_leaves_v_to_o_out(tiny_model_dir):
    block = load_fp32(tiny_model_dir).model.layers[0]  # 4 heads, 2 KV heads: v has 32 outputs, o 64 inputs
    by_prev = {r.mapping.prev: r for r in awq_arch.resolve(awq_arch.LLAMA_LIKE, block, "model.layers.0")}
    assert not by_prev["self_attn.v_proj"].foldable and "grouped KV heads" in by_prev["self_attn.v_proj"].why_not
    assert all(by_prev[p].foldable for p in ("input_layernorm", "post_attention_layernorm", "mlp.up_proj"))


def unpack_awq_words(words: torch.Tensor) -> torch.Tensor:
    """Test-side reader of AutoAWQ's order: nibble i of word c holds output column 8c + ORDER[i]."""
    rows, cols = words.shape
    out = torch.empty(rows, cols * 8, dtype=torch.int64)
    w = words.to(torch.int64) & 0xFFFFFFFF
    for i in range(8):
        out[:, AWQ_ORDER[i]::8] = (w >> (4 * i)) & 0xF
    return out


def test_checkpoint_is_awq_gemm_and_loads(tmp_path, tiny_model_dir, calib):
    out = tmp_path / "ckpt"
    model, summary = quantize(tiny_model_dir, calib, out)
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
                  "modules_to_not_convert": None}
    assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    t = load_file(str(out / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj"  # [64, 128]: in 128, out 64
    assert t[f"{name}.qweight"].shape == (128, 8) and t[f"{name}.qweight"].dtype == torch.int32
    assert t[f"{name}.qzeros"].shape == (4, 8) and t[f"{name}.scales"].shape == (4, 64)
    assert t[f"{name}.scales"].dtype == torch.float16
    assert not any(k.endswith(".g_idx") for k in t) and f"{name}.weight" not in t
    # dequantise the stored integers the way vLLM's awq kernel does: (q - zero) * scale, true zeros
    q = unpack_awq_words(t[f"{name}.qweight"]).float()  # [in, out]
    z = unpack_awq_words(t[f"{name}.qzeros"]).float()  # [groups, out]
    s = t[f"{name}.scales"].float()
    g = torch.arange(128) // 32
    w = ((q - z[g]) * s[g]).t()
    torch.testing.assert_close(w, model.get_submodule(name).weight, rtol=0, atol=1e-6)
    # folded norms are saved: they differ from the original model's
    orig = load_fp32(tiny_model_dir)
    assert not torch.allclose(t["model.layers.0.input_layernorm.weight"], orig.model.layers[0].input_layernorm.weight)
    loaded, _, info = load_checkpoint(out, "float32", "cpu")
    assert info.method == "awq" and info.bits == 4 and info.group_size == 32
    x = calib[0].input_ids[:2]
    with torch.no_grad():  # the quantizer left the de-quantized weights in `model`
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
    rows = summary.layers
    assert len(rows) == 21 and all(0 < r["output_error"] < 0.5 for r in rows)
    by = {r["module"]: r for r in rows}
    assert by["model.layers.0.mlp.gate_proj"]["awq_prev"] == "post_attention_layernorm"
    assert "awq_prev" not in by["model.layers.0.self_attn.o_proj"]  # grouped KV heads: no v -> o scale
    assert by["model.layers.0.self_attn.q_proj"]["clipped_groups"] == 0.0  # q/k are never clipped
    # the search never ends above "no scaling" on its calibration loss
    assert all(r["awq_loss"] <= r["awq_loss_unscaled"] for r in rows if "awq_loss" in r)
    assert summary.details["searched_mappings"] == 9 and summary.details["solved_blocks"] == [0, 1, 2]


def test_symmetric_grid_and_float32_search(tmp_path, tiny_model_dir, calib):
    out = tmp_path / "ckpt"
    model, summary = quantize(tiny_model_dir, calib, out, zero_point=False, calib_dtype="float32", clip=False)
    assert summary.details["calib_dtype"] == "torch.float32"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["zero_point"] is False
    t = load_file(str(out / "model.safetensors"))
    assert bool((unpack_awq_words(t["model.layers.0.mlp.up_proj.qzeros"]) == 8).all())  # 2**(bits-1)
    assert all(r["clipped_groups"] == 0.0 for r in summary.layers)
    loaded, _, _ = load_checkpoint(out, "float32", "cpu")
    x = calib[0].input_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)


def test_overrides_skip_and_group_size(tmp_path, tiny_model_dir, calib, caplog):
    out = tmp_path / "ckpt"
    with caplog.at_level(logging.WARNING, logger="llmquant"):
        model, summary = quantize(tiny_model_dir, calib, out, overrides=[
            {"pattern": r"layers\.2\.self_attn\.q_proj", "skip": True},
            {"pattern": r"mlp\.down_proj", "group_size": 64}])
    assert "vLLM reads one group_size" in caplog.text
    by = {r["module"]: r for r in summary.layers}
    assert "model.layers.2.self_attn.q_proj" not in by and len(by) == 20
    assert by["model.layers.0.mlp.down_proj"]["group_size"] == 64
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["modules_to_not_convert"] == ["model.layers.2.self_attn.q_proj"]
    t = load_file(str(out / "model.safetensors"))
    assert t["model.layers.1.mlp.down_proj.scales"].shape == (2, 64)
    assert "model.layers.2.self_attn.q_proj.weight" in t  # kept dense, but scaled with k/v
    loaded, _, _ = load_checkpoint(out, "float32", "cpu")
    assert isinstance(loaded.model.layers[2].self_attn.q_proj, torch.nn.Linear)
    x = calib[0].input_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("search", [{}, {"search_samples": 4, "coarse_grid": None}, {"propagate": "float"}],
                         ids=["defaults", "4-samples-full-grid", "float-outputs"])
def test_resume_reapplies_the_saved_search(tmp_path, tiny_model_dir, calib, monkeypatch, crash_after_block, caplog,
                                          search):
    """(12 calibration samples: the defaults score every sample; 4 samples score the attention on
    the first 4 and the MLP on every 3rd token.)"""
    _, whole = quantize(tiny_model_dir, calib, tmp_path / "whole", **search)
    work = tmp_path / "work"
    with crash_after_block(1):
        quantize(tiny_model_dir, calib, tmp_path / "resumed", work_dir=work, **search)
    state = load_file(str(work / "blocks" / "block-0000.safetensors"))
    assert {"scale.input_layernorm", "scale.post_attention_layernorm", "scale.mlp.up_proj",
            "clip.self_attn.v_proj", "clip.mlp.down_proj"} <= set(state)
    assert not any(k.startswith("clip.self_attn.q_proj") for k in state)

    searched = []
    real_search = AWQHandler._search
    monkeypatch.setattr(AWQHandler, "_search", lambda self, r, g: (searched.append(g.names[0]), real_search(self, r, g)))
    with caplog.at_level(logging.INFO, logger="llmquant"):
        _, resumed = quantize(tiny_model_dir, calib, tmp_path / "resumed", work_dir=work, **search)
    assert resumed.details["resumed_blocks"] == [0, 1] and resumed.details["solved_blocks"] == [2]
    assert resumed.details["searched_mappings"] == 3 and all(n.startswith("model.layers.2.") for n in searched)
    assert "re-applied from the saved search" in caplog.text
    a = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == a
    key = lambda rows: [(r["module"], r["output_error"], r.get("awq_ratio"), r["clipped_groups"]) for r in rows]  # noqa: E731
    assert key(resumed.layers) == key(whole.layers)  # restored blocks report their saved rows
    scored = {r["awq_prev"]: (r["awq_search_tokens"], r["awq_candidates_scored"])
              for r in whole.layers if r.get("awq_prev")}
    all_tokens, grid = 12 * 64, 21  # n_grid 20 and s = 1
    if "search_samples" in search:  # attention: the first 4 samples whole; MLP: every 3rd token; lone Linears: all tokens
        assert scored == {"input_layernorm": (4 * 64, grid), "post_attention_layernorm": (12 * 64 // 3, grid),
                          "mlp.up_proj": (all_tokens, grid)}  # (grouped KV heads: no v -> o)
    else:  # 16 samples asked, 12 there: all of them; coarse to fine scores at most 12 candidates
        assert {k: t for k, (t, _) in scored.items()} == dict.fromkeys(scored, all_tokens)
        assert len(scored) == 3 and all(n <= 12 for _, n in scored.values())

    # every block saved: the search is re-applied without a single search or forward
    searched.clear()
    _, again = quantize(tiny_model_dir, calib, tmp_path / "again", work_dir=work, **search)
    assert again.details["resumed_blocks"] == [0, 1, 2] and again.details["searched_mappings"] == 0 and not searched
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == a
    # other search settings do not reuse it
    _, other = quantize(tiny_model_dir, calib, tmp_path / "other", work_dir=work, **(search | {"n_grid": 10}))
    assert other.details["resumed_blocks"] == [] and other.details["searched_mappings"] == 9


def test_float_outputs_change_what_later_blocks_calibrate_on(tmp_path, tiny_model_dir, calib):
    """propagate float: block 0 sees the same inputs either way; block 1 calibrates on the float
    block 0's outputs instead of the quantized one's, so its search and weights differ."""
    _, q = quantize(tiny_model_dir, calib, tmp_path / "q")
    _, f = quantize(tiny_model_dir, calib, tmp_path / "f", propagate="float")
    a = load_file(str(tmp_path / "q" / "model.safetensors"))
    b = load_file(str(tmp_path / "f" / "model.safetensors"))
    block0 = [k for k in a if k.startswith("model.layers.0.")]
    block1 = [k for k in a if k.startswith("model.layers.1.") and k.endswith("qweight")]
    assert block0 and all(torch.equal(a[k], b[k]) for k in block0)
    assert any(not torch.equal(a[k], b[k]) for k in block1)


def test_tiny_recipe_end_to_end_with_awq(tiny_recipe, board_path):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    path = tiny_recipe(variants="""
  - {name: rtn4, method: rtn, bits: 4, group_size: 32, sym: false}
  - {name: awq4, method: awq, bits: 4, group_size: 32}
""", extra="""calibration:
  dataset: {source: "builtin:pydoc", split: train}
  n_samples: 16
  seqlen: 128
""")
    summary = run(load_recipe(path))
    ppl = {o.name: o.result.ppl for o in summary.variants}
    assert ppl["awq4"] < ppl["rtn4"] < 1.5 * summary.baseline.ppl
    o = next(v for v in summary.variants if v.name == "awq4")
    assert o.summary["format"] == "awq-gemm" and o.summary["solved_blocks"] == [0, 1, 2]
    manifest = json.loads((summary.run_dir / "variants" / "awq4" / "manifest.json").read_text())
    assert len(manifest["summary"]["layers"]) == 21
    # the saved search outlives the checkpoint (the pipeline drops GPTQ's resume state, not AWQ's)
    assert (summary.run_dir / "variants" / "awq4" / "work" / "manifest.json").exists()
    # another save_dtype rebuilds the checkpoint from the saved search: no block searched again
    again = run(load_recipe(tiny_recipe(variants="""
  - {name: awq4, method: awq, bits: 4, group_size: 32, save_dtype: float16}
""", extra="""calibration:
  dataset: {source: "builtin:pydoc", split: train}
  n_samples: 16
  seqlen: 128
""")))
    o2 = next(v for v in again.variants if v.name == "awq4")
    assert o2.summary["resumed_blocks"] == [0, 1, 2] and o2.summary["searched_mappings"] == 0
    assert o2.result.ppl == pytest.approx(ppl["awq4"], rel=0.01)  # same integers, fp16 norms


def bad_variant(tmp_path, variant: str) -> str:
    from llmquant.recipe import load_recipe

    p = write_recipe(tmp_path / "r.yaml", f"""
model: {{source: some/model}}
calibration: {{dataset: "builtin:pydoc", seqlen: 64}}
eval: {{dataset: "builtin:pydoc", seqlen: 64}}
variants:
  - {variant}
""")
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("variant,expected", [
    ("{name: a, method: awq, bits: 3}", "variants[0].bits: got 3; an AWQ GEMM checkpoint holds 4-bit weights"),
    ("{name: a, method: awq, bits: 8}", "use method gptq for 8-bit weights"),
    ("{name: a, method: awq, sym: true}", "variants[0].sym: got True; there is no sym option for AWQ; use zero_point"),
    ("{name: a, method: awq, quantize_lm_head: true}", "method awq does not quantize lm_head"),
    ("{name: a, method: awq, overrides: [{pattern: x, bits: 8}]}", "overrides[0].bits: 8: an AWQ checkpoint has one bit width"),
    ("{name: a, method: awq, n_grid: 0}", "variants[0].n_grid: got 0"),
    ("{name: a, method: awq, clip_max_shrink: 1.0}", "variants[0].clip_max_shrink: got 1.0"),
])
def test_bad_awq_variants_are_one_line_errors(tmp_path, variant, expected):
    assert expected in bad_variant(tmp_path, variant)


def test_unknown_architecture_is_refused_before_loading_weights(tmp_path):
    from transformers import GPT2Config

    from llmquant.preflight import preflight
    from llmquant.recipe import load_recipe

    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64).save_pretrained(model_dir)  # config only: no weights
    p = write_recipe(tmp_path / "r.yaml", f"""
model: {{source: {model_dir}}}
calibration: {{dataset: "builtin:pydoc", seqlen: 64}}
eval: {{dataset: "builtin:pydoc", seqlen: 64}}
variants:
  - {{name: a, method: awq, group_size: 32}}
""")
    with pytest.raises(UserError) as e:
        preflight(load_recipe(p))
    msg = str(e.value)
    assert "variants[0] (a): model type 'gpt2' has no AWQ architecture mapping; supported model types: " \
           "llama, mistral, qwen2, qwen3" in msg and "\n" not in msg
