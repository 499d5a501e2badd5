"""torch's CPU int4 byte layouts (one per dispatch capability) against a packer written from the
layout's description, and the capability actually dispatched in a subprocess per capability."""

import json
import os
import subprocess
import sys

import pytest
import torch

from llmquant.formats.int4_layout import CANDIDATES, Int4Layout
from llmquant.formats.kernels import dequant_int4_columns, int4_dense_matmul, native_first, unpack_int4_layout
from llmquant.formats.native import load


def reference_pack(q: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """Byte by byte: block b of B rows stores, for each k, B/2 bytes; byte j holds rows (j, j + B/2)
    when split, else (2j, 2j + 1), the first in the low nibble."""
    n, k = q.shape
    bsz, half = layout.block, layout.block // 2
    out = torch.zeros(n // bsz, k, half, dtype=torch.uint8)
    for b in range(n // bsz):
        for j in range(half):
            lo, hi = (j, j + half) if layout.split else (2 * j, 2 * j + 1)
            out[b, :, j] = (q[b * bsz + lo] | (q[b * bsz + hi] << 4)).to(torch.uint8)
    return out.reshape(n, k // 2)


@pytest.mark.parametrize("layout", CANDIDATES, ids=lambda l: l.name)
def test_every_layout_unpacks_and_dequantizes(layout):
    torch.manual_seed(0)
    n, k, group = 128, 64, 32
    q = torch.randint(0, 16, (n, k))
    packed = reference_pack(q, layout)
    assert torch.equal(unpack_int4_layout(packed, n, k, layout).long(), q)
    scales, zeros = torch.rand(k // group, n) + 0.5, torch.randint(0, 16, (k // group, n)).float()
    w = (q.float() - zeros.repeat_interleave(group, 0).t()) * scales.repeat_interleave(group, 0).t()
    cols = dequant_int4_columns(layout.blocks(packed, n, k), scales, zeros, 0, group, torch.float32, layout.split)
    assert torch.equal(cols, w.t())
    native = native_first(lambda *a: pytest.fail("the C kernel should have run"))
    if load("int4_dequant") is not None:  # the C version of the same columns, bit for bit
        assert torch.equal(native(layout.blocks(packed, n, k), scales, zeros, 0, group, torch.float32, layout.split),
                           w.t())
    x = torch.randn(5, k)
    if load("int4_gemm") is not None:  # the C decode kernel reads every layout in place
        from llmquant.formats.native import int4_matmul

        y = int4_matmul(x, packed, n, layout.block, layout.split, scales, zeros, 0, group)
        torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-4)
    for elems in (k * layout.block, 1 << 20):  # one row block at a time, and all at once
        y = int4_dense_matmul(x, packed, scales, zeros, group, block_elems=elems, layout=layout)
        torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)
        if load("int4_dequant") is not None:
            assert torch.equal(int4_dense_matmul(x, packed, scales, zeros, group, block_elems=elems, layout=layout,
                                                 dequant=native), y)


PROBE = """
import json, torch
from llmquant.formats.int4_layout import detect_layout
from llmquant.formats.intweight import IntWeight
from llmquant.formats.qlinear import QuantLinear
from llmquant.quantize.grid import group_index, quantize_rtn
torch.manual_seed(0)
w = torch.randn(192, 128)
q, s, z = quantize_rtn(w, 4, 64, False)
iw = IntWeight(q, s, z, group_index(128, 64), 4)
m = QuantLinear(iw, None)
x = torch.randn(40, 128)
ref = x.double() @ iw.dequantize().double().t()
l = detect_layout()
print(json.dumps({"cap": torch.backends.cpu.get_cpu_capability(), "layout": l and l.name, "module": m.layout,
                  "dense_err": float((m(x).double() - ref).abs().max()),
                  "decode_rel": float((m(x[:2]).double() - ref[:2]).norm() / ref[:2].norm())}))
"""


@pytest.mark.parametrize("capability,expected", [("avx2", "split32"), ("default", "adjacent32")])
def test_lesser_cpu_dispatch_keeps_one_copy(capability, expected):
    """What an AVX2-only (or unvectorised) machine runs: torch packs another layout, and the module
    still reads its dense path from the packed bytes (no second copy) and computes correctly."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cap"] == capability.upper()
    assert got["layout"] == expected and got["module"] == "int4pack"
    assert got["dense_err"] < 1e-3 and got["decode_rel"] < 1e-2
