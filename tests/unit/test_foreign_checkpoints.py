"""Foreign checkpoints (GPTQModel/AutoGPTQ v1 and v2, AutoAWQ GEMM, llm-compressor
pack-quantized) written in each tool's layout by tests/foreign_writers.py, read by our loader:
logits must match a float model built from the dequantized weights."""

import json

import pytest
import torch

from llmquant.errors import UserError
from llmquant.formats.load import inspect_checkpoint, load_checkpoint
from llmquant.formats.qlinear import QuantLinear
from tests.foreign_writers import write_awq, write_compressed_tensors, write_gptq


def logits_match(ckpt, ref, n_quantized):
    model, tok, info = load_checkpoint(ckpt, "float32", "cpu")
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == n_quantized
    x = tok("def f(x): return x + 1  # a comment\n" * 6, return_tensors="pt").input_ids
    assert x.shape[1] > 40  # enough rows for QuantLinear's exact (dense) path
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=1e-4, atol=1e-4)
    return model, info


@pytest.mark.parametrize("bits,sym,desc_act", [(4, True, False), (4, False, True), (3, False, False),
                                               (8, True, True), (2, True, False)])
def test_gptq_v1_as_gptqmodel_writes_it(tmp_path, tiny_model_dir, bits, sym, desc_act):
    ckpt, ref = write_gptq(tiny_model_dir, tmp_path / "g", bits=bits, sym=sym, desc_act=desc_act)
    model, info = logits_match(ckpt, ref, 21)
    assert info.format == "gptq-v1" and info.bits == bits and info.desc_act is desc_act
    if desc_act:  # act-order groups survive: g_idx is not sorted
        g = model.model.layers[0].self_attn.q_proj.int_weight().g_idx
        assert not torch.equal(g, torch.sort(g).values)


def test_gptq_dynamic_per_module_bits_and_skips(tmp_path, tiny_model_dir):
    dynamic = {r"+:.*\.mlp\.down_proj": {"bits": 8, "group_size": 64},
               r"-:.*layers\.2\.self_attn\.o_proj": {}}
    ckpt, ref = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, group_size=32, dynamic=dynamic)
    model, _ = logits_match(ckpt, ref, 20)
    down = model.model.layers[1].mlp.down_proj
    assert down.bits == 8 and down.group_size == 64
    assert model.model.layers[1].mlp.up_proj.bits == 4
    assert type(model.model.layers[2].self_attn.o_proj) is torch.nn.Linear


@pytest.mark.parametrize("sym", [True, False])
def test_gptq_v2_true_zero_points(tmp_path, tiny_model_dir, sym):
    # v2 stores the zero itself, so an asymmetric zero of 0 is representable
    ckpt, ref = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, sym=sym, v2=True)
    _, info = logits_match(ckpt, ref, 21)
    assert info.format == "gptq-v2"


def test_gptq_v2_read_as_v1_would_be_wrong(tmp_path, tiny_model_dir):
    """The zero offset matters: the same tensors declared v1 give other logits."""
    ckpt, ref = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, sym=False, v2=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"]["checkpoint_format"] = "gptq"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    model, tok, _ = load_checkpoint(ckpt, "float32", "cpu")
    x = tok("def f(x): return x", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (model(x).logits - ref(x).logits).abs().max() > 1e-2


@pytest.mark.parametrize("zero_point", [True, False])
def test_awq_gemm_as_autoawq_writes_it(tmp_path, tiny_model_dir, zero_point):
    ckpt, ref = write_awq(tiny_model_dir, tmp_path / "a", group_size=32, zero_point=zero_point)
    _, info = logits_match(ckpt, ref, 21)
    assert info.format == "awq-gemm" and info.bits == 4 and info.group_size == 32 and info.sym is (not zero_point)


def test_awq_modules_to_not_convert_stay_dense(tmp_path, tiny_model_dir):
    ckpt, ref = write_awq(tiny_model_dir, tmp_path / "a", group_size=64, skip=("down_proj",))
    model, _ = logits_match(ckpt, ref, 18)
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear


def test_awq_gemv_refused_with_reason(tmp_path, tiny_model_dir):
    ckpt, _ = write_awq(tiny_model_dir, tmp_path / "a", version="gemv")
    assert inspect_checkpoint(ckpt).format == "awq-gemv"
    with pytest.raises(UserError, match=r"AWQ version 'gemv' is not supported; supported: gemm"):
        load_checkpoint(ckpt, "float32", "cpu")


@pytest.mark.parametrize("bits,gs,sym,actorder", [(4, 32, True, False), (4, 64, False, False),
                                                  (8, None, True, False), (4, 32, True, True),
                                                  (8, 32, False, False)])
def test_compressed_tensors_pack_quantized(tmp_path, tiny_model_dir, bits, gs, sym, actorder):
    ckpt, ref = write_compressed_tensors(tiny_model_dir, tmp_path / "c", bits=bits, group_size=gs, sym=sym,
                                         actorder=actorder)
    _, info = logits_match(ckpt, ref, 21)
    assert info.format == "ct-pack-quantized" and info.bits == bits
    assert info.group_size == (-1 if gs is None else gs) and info.sym is sym


def test_compressed_tensors_old_zero_points_and_ignore(tmp_path, tiny_model_dir):
    ckpt, ref = write_compressed_tensors(tiny_model_dir, tmp_path / "c", bits=4, group_size=32, sym=False,
                                         old_zero_points=True, ignore=(r"re:.*layers\.0\.mlp\..*",))
    model, _ = logits_match(ckpt, ref, 18)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_compressed_tensors_other_formats_refused(tmp_path, tiny_model_dir):
    ckpt, _ = write_compressed_tensors(tiny_model_dir, tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"]["format"] = "float-quantized"
    cfg["quantization_config"]["config_groups"]["group_0"]["format"] = "float-quantized"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"compressed-tensors format float-quantized is not supported; "
                                         r"supported: pack-quantized"):
        load_checkpoint(ckpt, "float32", "cpu")


def test_unsupported_quant_method_names_it_and_the_supported_ones(tmp_path, tiny_model_dir):
    ckpt, _ = write_compressed_tensors(tiny_model_dir, tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "exl2", "bits": 4}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"quant_method 'exl2' is not supported; supported: awq, bitsandbytes, "
                                         r"compressed-tensors, gptq and unquantized checkpoints"):
        load_checkpoint(ckpt, "float32", "cpu")
