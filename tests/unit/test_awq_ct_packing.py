"""Round trips of the AWQ GEMM and compressed-tensors packers, and their bit order against
hand-checked words and the test-side writers (independent per-value loops)."""

import numpy as np
import pytest
import torch

from llmquant.formats import awq_gemm, compressed_tensors as ct
from llmquant.formats.intweight import IntWeight
from tests.foreign_writers import as_int32, awq_pack_row, ct_pack_cols, rtn


def test_awq_hand_checked_word():
    # output columns 0..7 hold 1..8; AWQ stores column ORDER[i] in nibble i:
    # nibbles (low to high) 1,3,5,7,2,4,6,8 -> 0x86427531
    word = awq_gemm.pack_awq(torch.arange(1, 9, dtype=torch.int32).reshape(1, 8), 4)
    assert word.shape == (1, 1) and word.dtype == torch.int32
    assert word.item() == 0x86427531 - (1 << 32)
    assert awq_gemm.unpack_awq(word, 4).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]


def test_awq_8bit_hand_checked_word():
    # 8 bits: bytes (low to high) hold columns 0, 2, 1, 3 (vLLM marlin_utils interleave)
    word = awq_gemm.pack_awq(torch.tensor([[0x11, 0x22, 0x33, 0x44]], dtype=torch.int32), 8)
    assert word.item() == 0x44223311
    assert awq_gemm.unpack_awq(word, 8).tolist() == [[0x11, 0x22, 0x33, 0x44]]


def test_awq_matches_independent_writer():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 16, (5, 32), generator=g, dtype=torch.int32)
    ours = awq_gemm.pack_awq(v, 4)
    theirs = as_int32(np.stack([awq_pack_row(r) for r in v.numpy()]))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("bits", [4, 8])
def test_awq_layer_round_trip_exact(bits):
    torch.manual_seed(bits)
    w = torch.randn(64, 128)
    grid = rtn(w, bits, 32, sym=False)
    layer = IntWeight(grid.q.to(torch.int32), grid.scales, grid.zeros, grid.g_idx.to(torch.int32), bits)
    t = awq_gemm.pack_layer(layer)
    assert t["qweight"].shape == (128, 64 * bits // 32) and t["qzeros"].shape == (4, 64 * bits // 32)
    assert t["scales"].shape == (4, 64) and t["scales"].dtype == torch.float16
    back = awq_gemm.unpack_layer(t, bits)
    assert torch.equal(back.q, layer.q) and torch.equal(back.zeros, layer.zeros)
    assert torch.equal(back.scales, layer.scales) and torch.equal(back.g_idx, layer.g_idx)
    assert torch.equal(back.dequantize(), grid.dequantize())


def test_awq_rejects_act_order_and_bad_bits():
    grid = rtn(torch.randn(16, 64), 4, 32, sym=False, act_order_seed=1)
    layer = IntWeight(grid.q.to(torch.int32), grid.scales, grid.zeros, grid.g_idx.to(torch.int32), 4)
    with pytest.raises(ValueError, match="no g_idx"):
        awq_gemm.pack_layer(layer)
    with pytest.raises(ValueError, match="4 or 8-bit"):
        awq_gemm.pack_awq(torch.zeros(1, 32, dtype=torch.int32), 3)


def test_ct_hand_checked_word():
    # compressed-tensors: signed values -8..7 stored +8, element k of a run at bits 4k
    signed = torch.tensor([[-8, -7, 0, 1, 2, 3, 6, 7]])
    stored = (signed + 8).to(torch.int32)  # 0, 1, 8, 9, 10, 11, 14, 15
    word = as_int32(ct_pack_cols(stored.numpy(), 4))
    assert word.item() == 0xFEBA9810 - (1 << 32)
    layer = IntWeight(stored, torch.ones(1, 1), torch.full((1, 1), 8.0), torch.zeros(8, dtype=torch.int32), 4)
    assert torch.equal(ct.pack_layer(layer, symmetric=True)["weight_packed"], word)


@pytest.mark.parametrize("bits,sym,gs", [(4, True, 32), (4, False, 32), (8, False, -1), (8, True, 64)])
def test_ct_layer_round_trip_and_writer_agreement(bits, sym, gs):
    torch.manual_seed(bits + gs)
    w = torch.randn(40, 128)  # 40 rows: zero points packed along the output dim need padding at 4 bits
    grid = rtn(w, bits, gs, sym)
    layer = IntWeight(grid.q.to(torch.int32), grid.scales, grid.zeros, grid.g_idx.to(torch.int32), bits)
    t = ct.pack_layer(layer, symmetric=sym, scale_dtype=torch.float32)
    assert t["weight_packed"].shape == (40, 128 * bits // 32)
    assert torch.equal(t["weight_packed"], as_int32(ct_pack_cols(grid.q.numpy(), bits)))
    assert t["weight_scale"].shape == (40, 128 // (128 if gs == -1 else gs))
    if not sym:
        assert t["weight_zero_point"].shape == (-(-40 * bits // 32), t["weight_scale"].shape[1])
    scheme = ct.WeightScheme(bits, sym, "channel" if gs == -1 else "group", gs, None, ("Linear",), "g")
    back = ct.unpack_layer(t, scheme)
    assert torch.equal(back.q, layer.q) and torch.equal(back.zeros, layer.zeros)
    assert torch.equal(back.dequantize(), grid.dequantize())


def test_ct_old_unpacked_int8_zero_points():
    grid = rtn(torch.randn(16, 64), 4, 32, sym=False)
    layer = IntWeight(grid.q.to(torch.int32), grid.scales, grid.zeros, grid.g_idx.to(torch.int32), 4)
    t = ct.pack_layer(layer, symmetric=False)
    t["weight_zero_point"] = (grid.zeros.t() - 8).to(torch.int8)  # releases before zero-point packing
    back = ct.unpack_layer(t, ct.WeightScheme(4, False, "group", 32, None, ("Linear",), "g"))
    assert torch.equal(back.zeros, layer.zeros)


def test_ct_config_parsing():
    qc = {"format": "pack-quantized", "config_groups": {
        "g0": {"targets": ["re:.*mlp.*"], "weights": {"num_bits": 8, "symmetric": True, "strategy": "channel"}},
        "g1": {"targets": ["Linear"], "weights": {"num_bits": 4, "symmetric": False, "strategy": "group",
                                                  "group_size": 64, "actorder": "group"}}}}
    s = ct.schemes(qc)
    assert [(x.bits, x.group_size, x.symmetric, x.actorder) for x in s] == [(8, -1, True, None), (4, 64, False, "group")]
    assert ct.scheme_for("model.layers.0.mlp.up_proj", s).bits == 8
    assert ct.scheme_for("model.layers.0.self_attn.q_proj", s).bits == 4
    assert ct.formats_used(qc) == {"pack-quantized"}
    with pytest.raises(ValueError, match="activations are quantized"):
        ct.schemes({"config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8},
                                            "input_activations": {"num_bits": 8}}}})
    assert ct.is_ignored("lm_head", ["lm_head"]) and ct.is_ignored("model.layers.1.mlp.x", ["re:.*layers\\.1\\..*"])
