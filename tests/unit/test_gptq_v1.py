import torch

from llmquant.formats import gptq_v1
from llmquant.formats.intweight import IntWeight
from llmquant.formats.bitpack import unpack_cols
from llmquant.quantize.grid import group_index, quantize_rtn


def make_layer(bits=4, out_f=64, in_f=128, gs=32, sym=False, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out_f, in_f)
    q, s, z = quantize_rtn(w, bits, gs, sym)
    return w, IntWeight(q, s, z, group_index(in_f, gs), bits)


def test_layout_shapes_and_dtypes():
    for bits in (2, 3, 4, 8):
        _, layer = make_layer(bits)
        t = gptq_v1.pack_layer(layer)
        assert t["qweight"].shape == (128 * bits // 32, 64) and t["qweight"].dtype == torch.int32
        assert t["qzeros"].shape == (4, 64 * bits // 32) and t["qzeros"].dtype == torch.int32
        assert t["scales"].shape == (4, 64) and t["scales"].dtype == torch.float16
        assert t["g_idx"].shape == (128,) and t["g_idx"].dtype == torch.int32


def test_v1_stores_zero_minus_one():
    _, layer = make_layer(4, sym=True)
    t = gptq_v1.pack_layer(layer)
    stored = unpack_cols(t["qzeros"], 4)
    assert torch.all(stored == 7)  # symmetric 4-bit zero 8, stored as 7 (0x77777777 words)
    assert torch.all(t["qzeros"] == 0x77777777)


def test_round_trip_exact():
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            _, layer = make_layer(bits, sym=sym, seed=bits)
            back = gptq_v1.unpack_layer(gptq_v1.pack_layer(layer), bits)
            assert torch.equal(back.q, layer.q)
            assert torch.equal(back.zeros, layer.zeros)
            assert torch.equal(back.scales, layer.scales)
            assert torch.equal(back.dequantize(), layer.dequantize())


def test_v2_zero_offset():
    _, layer = make_layer(4, sym=False)
    t = gptq_v1.pack_layer(layer)
    v2 = gptq_v1.unpack_layer(t, 4, zero_offset=0)
    assert torch.equal(v2.zeros + 1, layer.zeros)


def test_shape_problems():
    assert gptq_v1.shape_problem(576, 576, 4, 64) is None
    assert "does not divide in_features 576" in gptq_v1.shape_problem(576, 576, 4, 128)
    assert "multiple of 32" in gptq_v1.shape_problem(48, 64, 3, -1)
    assert gptq_v1.shape_problem(64, 64, 3, 32) is None


def test_dynamic_rules_use_match_semantics():
    import re

    from llmquant.quantize.config import ModuleOverride

    rules = gptq_v1.dynamic_rules([ModuleOverride(pattern=r"mlp\.down_proj", skip=True),
                                   ModuleOverride(pattern=r"layers\.0\.", bits=8)], 4, 64, True)
    neg, pos = list(rules)
    assert neg.startswith("-:") and re.match(neg[2:], "model.layers.3.mlp.down_proj")
    assert pos.startswith("+:") and rules[pos] == {"bits": 8} and re.match(pos[2:], "model.layers.0.self_attn.q_proj")
