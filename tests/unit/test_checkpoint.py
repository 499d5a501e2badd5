"""RTN → GPTQ v1 checkpoint on disk → our loader: exact layout, exact weights, same logits."""

import json

import pytest
import torch
from safetensors import safe_open

from llmquant.formats.load import inspect_checkpoint, load_checkpoint
from llmquant.formats.qlinear import QuantLinear
from llmquant.quantize.base import QuantizeContext
from llmquant.quantize.grid import dequantize_groups, group_index, quantize_rtn
from llmquant.quantize.rtn.quantizer import RTNQuantizer
from llmquant.quantize.rtn.config import RTNVariant


def quantize_to(tmp_path, model_dir, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    variant = RTNVariant(name="v", method="rtn", **kw)
    out = tmp_path / "ckpt"
    summary = RTNQuantizer().quantize(model, variant, None, out, QuantizeContext(tokenizer=tok))
    return model, out, summary


def reference_model(model_dir, bits, gs, sym, skip=()):
    """The float model with each block Linear replaced by its RTN-dequantized weight (computed here)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name and not any(s in name for s in skip):
            q, s, z = quantize_rtn(mod.weight.data, bits, gs, sym)
            w = dequantize_groups(q, s, z, group_index(mod.in_features, gs))
            mod.weight.data = w
    return m.eval()


@pytest.mark.parametrize("bits,sym", [(4, True), (8, True), (3, False), (2, True)])
def test_logits_match_dequantized_reference(tmp_path, tiny_model_dir, bits, sym):
    _, out, summary = quantize_to(tmp_path, tiny_model_dir, bits=bits, group_size=32, sym=sym, save_dtype="float32")
    model, tok, info = load_checkpoint(out, "float32", "cpu")
    assert info.format == "gptq-v1" and info.bits == bits
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 3 * 7
    ref = reference_model(tiny_model_dir, bits, 32, sym)
    from tests.conftest import pydoc_text

    x = tok(pydoc_text("test")[:2000], return_tensors="pt").input_ids[:, :64]
    with torch.no_grad():
        # 64 rows per Linear: the exact fp32 dense path
        torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=1e-4, atol=1e-4)
        # a few rows: the int4 kernel (bits <= 4) with bf16 activations
        short, want = model(x[:, :4]).logits, ref(x[:, :4]).logits
        assert float((short - want).norm() / want.norm()) < (2e-2 if bits <= 4 else 1e-5)
    assert len(summary.layers) == 21 and all(r["rel_error"] > 0 for r in summary.layers)


def test_layout_config_and_files(tmp_path, tiny_model_dir):
    _, out, _ = quantize_to(tmp_path, tiny_model_dir, bits=4, group_size=32, sym=True,
                            overrides=[{"pattern": r"layers\.2\.mlp\.down_proj", "skip": True}])
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 32
    assert qc["sym"] is True and qc["desc_act"] is False and qc["checkpoint_format"] == "gptq"
    assert list(qc["dynamic"]) == [r"-:.*(?:layers\.2\.mlp\.down_proj)"]
    assert cfg["dtype"] == "float16"
    assert json.loads((out / "quantize_config.json").read_text())["bits"] == 4
    assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        q = "model.layers.0.self_attn.q_proj"
        assert f.get_tensor(f"{q}.qweight").shape == (64 // 8, 64)
        assert f.get_tensor(f"{q}.qzeros").shape == (2, 64 // 8)
        assert f.get_tensor(f"{q}.scales").dtype == torch.float16
        assert f.get_tensor(f"{q}.g_idx").tolist() == [i // 32 for i in range(64)]
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float16
    assert f"{q}.weight" not in keys
    assert "model.layers.2.mlp.down_proj.weight" in keys  # skipped: stays dense
    assert "lm_head.weight" not in keys  # tied to the embeddings: written once
    info = inspect_checkpoint(out)
    assert info.size_bytes == (out / "model.safetensors").stat().st_size
    model, _, _ = load_checkpoint(out, "float32", "cpu")
    assert isinstance(model.model.layers[2].mlp.down_proj, torch.nn.Linear)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_untied_head_and_quantized_head(tmp_path, tiny_model_untied_dir):
    _, out, _ = quantize_to(tmp_path, tiny_model_untied_dir, bits=8, group_size=32, quantize_lm_head=True)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["lm_head"] is True
    model, _, _ = load_checkpoint(out, "float32", "cpu")
    assert isinstance(model.lm_head, QuantLinear)


def test_overrides_other_bits(tmp_path, tiny_model_dir):
    _, out, summary = quantize_to(tmp_path, tiny_model_dir, bits=4, group_size=32,
                                  overrides=[{"pattern": r"\.mlp\.", "bits": 8, "group_size": 64}])
    by = {r["module"]: r for r in summary.layers}
    assert by["model.layers.0.mlp.up_proj"]["bits"] == 8 and by["model.layers.0.self_attn.q_proj"]["bits"] == 4
    model, _, _ = load_checkpoint(out, "float32", "cpu")
    assert model.model.layers[0].mlp.up_proj.bits == 8 and model.model.layers[0].self_attn.q_proj.bits == 4
    assert model.model.layers[0].mlp.down_proj.scales.shape[0] == 128 // 64
