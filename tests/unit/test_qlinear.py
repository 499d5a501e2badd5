"""Each kernel path of QuantLinear against the dequantized reference (x @ Ŵᵀ in float64)."""

import pytest
import torch

from llmquant.formats import qlinear
from llmquant.formats.intweight import IntWeight
from llmquant.formats.kernels import pack_nibbles, unpack_int4_layout, unpack_nibbles
from llmquant.formats.qlinear import QuantLinear
from llmquant.quantize.grid import group_index, quantize_rtn

DENSE_ROWS = max(qlinear.INT4_KERNEL_MAX_ROWS[(torch.float32, c)] for c in (False, True)) + 1  # fp32 calls this long take the exact dense path


def make_weight(out_f, in_f, bits, gs, sym=False, act_order=False, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out_f, in_f)
    q, s, z = quantize_rtn(w, bits, gs, sym)
    g_idx = group_index(in_f, gs)
    if act_order:  # a permuted assignment of columns to groups, as act-order produces
        perm = torch.randperm(in_f)
        q, g_idx = q[:, perm], g_idx[perm]
    return IntWeight(q, s, z, g_idx, bits)


def reference(x, iw, bias=None):
    y = x.double() @ iw.dequantize().double().t()
    return y + bias.double() if bias is not None else y


CASES = [
    # out, in, bits, group, act_order
    (128, 192, 4, 64, False),
    (64, 128, 4, -1, False),  # one group per row: kernel groups of 128 repeat its scale
    (128, 96, 3, 96, False),  # group 96 -> kernel group 32
    (64, 128, 2, 32, True),
    (192, 64, 4, 32, True),
]


def decode_path(rows):
    """The path a decode-sized call takes on this CPU (qlinear's tables, by dispatch capability)."""
    cap = torch.backends.cpu.get_cpu_capability()
    return "int4c" if rows <= qlinear.C_INT4_MAX_ROWS.get(cap, 0) else "int4"


def rel_err(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("out_f,in_f,bits,gs,act", CASES)
def test_dense_path_is_exact_in_fp32(out_f, in_f, bits, gs, act):
    iw = make_weight(out_f, in_f, bits, gs, act_order=act)
    bias = torch.randn(out_f)
    m = QuantLinear(iw, bias)
    assert m.packed is not None and m.layout == "int4pack" and m.rows is None  # one copy of the integers
    rows = max(qlinear.INT4_KERNEL_MAX_ROWS[(torch.float32, c)] for c in (False, True)) + 1
    x = torch.randn(rows, in_f)
    assert m.path_for(rows, torch.float32, x.device) == "dense"
    torch.testing.assert_close(m(x).double(), reference(x, iw, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("out_f,in_f,bits,gs,act", CASES)
def test_int4_kernel_path_within_bf16_tolerance(out_f, in_f, bits, gs, act):
    iw = make_weight(out_f, in_f, bits, gs, act_order=act)
    m = QuantLinear(iw, None)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, 3, in_f).to(dtype)
        assert m.path_for(3, dtype, x.device) == decode_path(3)
        y = m(x)
        assert y.dtype == dtype and y.shape == (1, 3, out_f)
        # bf16 activations and bf16 scale/zero in the kernel: relative error at bf16 level
        assert rel_err(y[0], reference(x[0].float(), iw)) < 1e-2


def test_bf16_dense_path():
    iw = make_weight(128, 256, 4, 64)
    m = QuantLinear(iw, None)
    x = torch.randn(100, 256).bfloat16()
    assert rel_err(m(x), reference(x.float(), iw)) < 1e-2


def test_8bit_and_odd_shapes_use_dense_rows_for_long_inputs():
    iw = make_weight(96, 64, 8, 32)
    m = QuantLinear(iw, None)
    assert m.packed is None and m.rows.dtype == torch.uint8 and m.rows.shape == (96, 64)
    x = torch.randn(DENSE_ROWS, 64)
    torch.testing.assert_close(m(x).double(), reference(x, iw), rtol=1e-5, atol=1e-4)
    iw4 = make_weight(80, 64, 4, 32)  # 80 rows: not whole blocks of any int4 layout (32 or 64 rows)
    m4 = QuantLinear(iw4, None)
    assert m4.layout == "nibbles" and m4.rows.shape == (80, 32) and m4.packed is not None
    x = torch.randn(DENSE_ROWS, 64)
    torch.testing.assert_close(m4(x).double(), reference(x, iw4), rtol=1e-5, atol=1e-4)
    assert rel_err(m4(x[:2]), reference(x[:2], iw4)) < 1e-2  # decode through the kernel still


def test_dense_blocks_cover_every_row():
    from llmquant.formats import kernels

    iw = make_weight(320, 128, 4, 64)
    m = QuantLinear(iw, None)
    x = torch.randn(16, 128)
    b = m.int4_layout.block  # whatever torch packs on this CPU (64 rows on AVX512, 32 on AVX2)
    for per in (1, 3, 1000):  # slices of 1 and 3 row blocks (a short last one), and all at once
        y = kernels.int4_dense_matmul(x, m.packed, m.scales, m.zeros, 64, m.q_shift, block_elems=128 * b * per)
        torch.testing.assert_close(y.double(), reference(x, iw), rtol=1e-5, atol=1e-4)
    rows = kernels.pack_nibbles(iw.q)
    y = kernels.rows_dense_matmul(x, rows, True, iw.scales, iw.zeros, iw.g_idx, block_elems=128 * 100)
    torch.testing.assert_close(y.double(), reference(x, iw), rtol=1e-5, atol=1e-4)


def test_int_weight_round_trip():
    for act in (False, True):
        iw = make_weight(128, 128, 4, 32, act_order=act)
        back = QuantLinear(iw).int_weight()
        assert torch.equal(back.q, iw.q) and torch.equal(back.g_idx.long(), iw.g_idx.long())
        assert torch.equal(back.dequantize(), iw.dequantize())


def test_layout_helpers():
    q = torch.randint(0, 16, (128, 64), dtype=torch.int32)
    assert torch.equal(unpack_nibbles(pack_nibbles(q)).int(), q)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(unpack_int4_layout(packed, 128, 64).int(), q)  # this CPU's layout, detected
    assert unpack_int4_layout(packed[:40], 80, 64) is None


def test_resident_bytes_a_quarter_of_fp32():
    from llmquant.eval.evaluate import resident_bytes

    iw = make_weight(1536, 576, 4, 64)
    m = QuantLinear(iw, None)
    dense = 1536 * 576 * 4
    assert resident_bytes(m) < dense * 0.16  # 0.5 B/weight + bf16 scale/zero + fp16 scales, uint8 zeros


def test_compiled_dequantization_is_bit_identical():
    from llmquant.formats.kernels import compiled_dequant

    iw = make_weight(192, 128, 4, 32)
    eager, fused = QuantLinear(iw, None), QuantLinear(iw, None, compiled_dequant())
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(100, 128).to(dtype)
        assert fused.path_for(100, dtype, x.device) == "dense"
        assert torch.equal(eager(x), fused(x))
        assert rel_err(fused(x), reference(x, iw)) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    from llmquant.formats import kernels

    def broken(fn, **kw):
        def f(*a):
            raise RuntimeError("no compiler here")
        return f

    monkeypatch.setenv("LLMQUANT_NATIVE", "0")  # fp32 would take the C kernel, not the compiled one
    monkeypatch.setattr(kernels.torch, "compile", broken)
    iw = make_weight(64, 64, 4, 32)
    m = QuantLinear(iw, None, kernels.compiled_dequant())
    x = torch.randn(DENSE_ROWS, 64)
    with caplog.at_level("WARNING", logger="llmquant"):
        torch.testing.assert_close(m(x).double(), reference(x, iw), rtol=1e-5, atol=1e-4)
    assert "using eager kernels" in caplog.text


def test_compiled_dequant_runs_shapes_past_its_cap_eagerly(monkeypatch):
    from llmquant.formats import kernels

    real, eager_shapes = kernels.dequant_int4_columns, []

    def counting(*args):
        eager_shapes.append(tuple(args[0].shape))
        return real(*args)

    monkeypatch.setenv("LLMQUANT_NATIVE", "0")  # fp32 would take the C kernel, not the compiled one
    monkeypatch.setattr(kernels, "dequant_int4_columns", counting)
    fn = kernels.compiled_dequant(max_shapes=1)
    iw1, iw2 = make_weight(64, 64, 4, 32), make_weight(128, 64, 4, 32)
    m1, m2 = QuantLinear(iw1, None, fn), QuantLinear(iw2, None, fn)
    x = torch.randn(DENSE_ROWS, 64)
    for m, iw in ((m1, iw1), (m2, iw2), (m1, iw1)):
        torch.testing.assert_close(m(x).double(), reference(x, iw), rtol=1e-5, atol=1e-4)
    b = m2.int4_layout.block
    assert eager_shapes == [(64, 128 // b, b // 2)]  # only the second shape ran eagerly; the first stayed compiled


def test_kernel_rule_depends_on_compiled_dequantization():
    from llmquant.formats.kernels import compiled_dequant

    iw = make_weight(128, 128, 4, 64)
    eager, fused = QuantLinear(iw, None), QuantLinear(iw, None, compiled_dequant())
    cpu = torch.device("cpu")
    assert eager.path_for(1, torch.bfloat16, cpu) == fused.path_for(1, torch.bfloat16, cpu) == decode_path(1)
    # 48 prompt rows in bf16: the eager dense path is slower than the kernel, the compiled one faster
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # there torch's int4 kernel is never used
        assert eager.path_for(48, torch.bfloat16, cpu) == "int4" and fused.path_for(48, torch.bfloat16, cpu) == "dense"
    assert eager.path_for(48, torch.float32, cpu) == fused.path_for(48, torch.float32, cpu) == "dense"


@pytest.mark.parametrize("gs,act,sym", [(64, False, True), (32, True, False), (-1, False, False)])
def test_int8_kernel_path_is_fp32_exact(gs, act, sym):
    """Decode-sized 8-bit calls go through the grouped int8 C kernel: fp32 math, so the result
    matches the dequantized reference as closely as the dense path does."""
    from llmquant.formats import native

    if native.load("int8_group_gemm") is None:
        pytest.skip("no C compiler: 8-bit weights use the dense path only")
    iw = make_weight(96, 128, 8, gs, sym=sym, act_order=act)
    bias = torch.randn(96)
    m = QuantLinear(iw, bias)
    assert m.layout == "uint8" and m.int8_group == (gs if gs > 0 else 128)
    for rows in (1, 3, qlinear.INT8_KERNEL_MAX_ROWS):
        x = torch.randn(rows, 128)
        assert m.path_for(rows, torch.float32, x.device) == "int8"
        torch.testing.assert_close(m(x).double(), reference(x, iw, bias), rtol=1e-5, atol=1e-4)
    xb = torch.randn(2, 128).bfloat16()
    assert m(xb).dtype == torch.bfloat16 and rel_err(m(xb), reference(xb.float(), iw, bias)) < 1e-2
    assert m.path_for(qlinear.INT8_KERNEL_MAX_ROWS + 1, torch.float32, xb.device) == "dense"


def test_int8_kernel_odd_row_counts_and_groups():
    from llmquant.formats import native

    if native.load("int8_group_gemm") is None:
        pytest.skip("no C compiler")
    torch.manual_seed(1)
    for n in (1, 5, 7, 130):  # row blocks of 4 with a short last one
        q = torch.randint(0, 256, (n, 96), dtype=torch.uint8)
        s, z = torch.rand(3, n) + 0.1, torch.randint(0, 256, (3, n), dtype=torch.uint8)
        x = torch.randn(2, 96)
        w = (q.double() - z.double().repeat_interleave(32, 0).t()) * s.double().repeat_interleave(32, 0).t()
        # fp32 rounding of sum(x*q) - z*sum(x), terms of size ~3000: 1e-3 absolute is 3e-7 of them
        torch.testing.assert_close(native.int8_group_matmul(x, q, s, z, 32).double(), x.double() @ w.t(),
                                   rtol=1e-5, atol=1e-3)
    assert native.int8_group_matmul(x, q, s, z, 24) is None  # not a multiple of 16: refused, caller's fallback


def test_native_dense_paths_are_bit_identical_to_eager(monkeypatch):
    """fp32 prefill dequantizes in C where a compiler exists: the same bits as the torch ops."""
    from llmquant.formats import native

    if native.load("int4_dequant") is None or native.load("int8_group_gemm") is None:
        pytest.skip("no C compiler: the torch paths are the only ones")
    x = torch.randn(DENSE_ROWS, 128)
    for bits in (4, 8):
        iw = make_weight(192, 128, bits, 32, act_order=True)
        m = QuantLinear(iw, torch.randn(192))
        assert m.path_for(DENSE_ROWS, torch.float32, x.device) == "dense"
        y_native = m(x)
        monkeypatch.setenv("LLMQUANT_NATIVE", "0")
        y_torch = m(x)
        monkeypatch.delenv("LLMQUANT_NATIVE")
        assert torch.equal(y_native, y_torch), bits
    iw = make_weight(96, 128, 8, 32)
    m = QuantLinear(iw, None)
    assert torch.equal(native.int8_group_dequant(m.rows, m.scales, m.zeros, 32, 5, 77), iw.dequantize()[5:77])


def test_c_int4_kernel_is_fp32_exact():
    """Our C kernel on torch's packed bytes (the decode path at AVX2/DEFAULT dispatch): fp32 math."""
    from llmquant.formats import native

    if native.load("int4_gemm") is None:
        pytest.skip("no C compiler")
    for bits, gs, act, sym in ((4, 64, False, False), (3, 32, True, True), (4, -1, False, True)):
        iw = make_weight(128, 192, bits, gs, sym=sym, act_order=act)
        bias = torch.randn(128)
        m = QuantLinear(iw, bias)
        m.path_for = lambda *a: "int4c"
        for rows in (1, 5):
            x = torch.randn(rows, 192)
            torch.testing.assert_close(m(x).double(), reference(x, iw, bias), rtol=1e-5, atol=1e-4)
        assert m(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [4, 3])
def test_full_range_grids_negative_scales_on_every_path(bits):
    """grid fullrange stores negative scales (groups whose positive side is the larger): the dense
    path stays exact and the int4 kernel path within bf16 tolerance."""
    from functools import partial

    from llmquant.quantize.grid import grid_params, quantize_groups

    torch.manual_seed(3)
    w = torch.randn(128, 192)
    q, s, z = quantize_groups(w, bits, 64, partial(grid_params, bits=bits, sym=True, full_range=True))
    assert (s < 0).any() and (s > 0).any()
    iw = IntWeight(q, s, z, group_index(192, 64), bits)
    m = QuantLinear(iw, None)
    x = torch.randn(DENSE_ROWS, 192)
    torch.testing.assert_close(m(x).double(), reference(x, iw), rtol=1e-5, atol=1e-4)
    x = torch.randn(1, 3, 192)
    assert rel_err(m(x)[0], reference(x[0], iw)) < 1e-2
