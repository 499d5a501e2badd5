"""nn.Module for a Linear whose weight stays quantized in memory (any packed format).

Built from an IntWeight; it never keeps a dequantized copy of the weight:
- 2/3/4-bit weights with equal groups are packed once for torch's CPU int4 kernel. Calls with
  few activation rows (decode) use that kernel; calls with many rows (prefill, perplexity
  windows) dequantize blocks of 64 output rows from the same packed bytes and use a dense
  matmul, which is faster there. The switch point is measured (bench/kernels.py).
- 8-bit weights keep uint8 rows. Decode-sized calls go through a small C kernel for grouped
  8-bit weights (native.py; fp32 math, compiled for the CPU capability torch dispatches to);
  longer ones dequantize blocks of rows and use a dense matmul.
- Shapes the int4 layout cannot take keep nibble rows and use the dense block path (the int4
  kernel still serves decode where it can pack them).
Outputs match the dequantized reference within the tolerances tests/unit/test_qlinear.py states.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from . import native
from .int4_layout import detect_layout
from .intweight import IntWeight
from .kernels import (
    DENSE_BLOCK_ELEMS,
    Int4Packed,
    dequant_int4_columns,
    contiguous_order,
    int4_dense_matmul,
    int4_matmul,
    native_first,
    pack_int4,
    pack_nibbles,
    q_shift,
    rows_dense_matmul,
    unpack_int4_layout,
    uniform_group,
    unpack_nibbles,
)

INT4_KERNEL_MAX_ROWS = {
    (torch.float32, False): 32, (torch.float32, True): 32,
    (torch.bfloat16, False): 64, (torch.bfloat16, True): 32,
}
"""Largest number of activation rows sent to torch's int4 kernel, by (activation dtype, whether the
dense path's dequantization is compiled); above it the dense path (dequantize + one matmul).
Measured with bench/kernels.py on the team's 2-core AVX512/AMX machine
(bench/results/kernels-2026-11-27-static.md), summed over a SmolLM2 block, bf16 activations:
int4 1.4 ms vs compiled dense 1.6 ms at 32 rows, 2.7 vs 1.7 at 64; eager dense 4.1 ms at 64, 4.5
vs int4 5.4 at 128. With fp32 activations the kernel would stay faster up to 64 rows but computes
in bf16: fp32 calls use it only for decode-sized inputs, so longer ones (prompts, perplexity
windows) are exact fp32. Not used where torch dispatches at DEFAULT (no vector kernel: 5-20x
slower than fp32, bench/results/kernels-2026-12-03-*.md)."""

C_INT4_MAX_ROWS = {"AVX512": 0, "AVX2": 1, "DEFAULT": 8}
"""Largest number of activation rows sent to our C int4 kernel (native.int4_matmul: fp32 math on
torch's packed bytes), by dispatch capability; it is tried before torch's kernel. Measured with
bench/kernels.py (bench/results/kernels-2026-12-03-*.md): at AVX2 one row is 1.0-1.6x faster than
torch's kernel (which wins from 2 rows); at AVX512 torch's is faster; at DEFAULT it is the only
usable kernel."""

INT8_KERNEL_MAX_ROWS = 8
"""Largest number of activation rows sent to the grouped int8 C kernel (native.int8_group_matmul);
above it the dense path. Measured with bench/kernels.py at AVX512 and AVX2 (fp32 and bf16
activations): the kernel wins up to 8 rows on both, ties or loses from 16."""


def _compact(t: Tensor, small: torch.dtype) -> Tensor:
    """`t` in the smaller dtype when that is exact (fp16 scales from checkpoints, integer zeros)."""
    c = t.to(small)
    return (c if torch.equal(c.float(), t.float()) else t.float()).contiguous()


class QuantLinear(nn.Module):
    def __init__(self, weight: IntWeight, bias: Tensor | None = None,
                 dequant: Callable[..., Tensor] | None = None):
        super().__init__()
        self.dequant = dequant or dequant_int4_columns  # or a compiled version (kernels.compiled_dequant)
        self.in_features, self.out_features, self.bits = weight.in_features, weight.out_features, weight.bits
        self.group_size = weight.in_features // weight.n_groups
        perm = contiguous_order(weight.g_idx)
        q = weight.q if perm is None else weight.q[:, perm]
        g_idx = weight.g_idx if perm is None else weight.g_idx[perm]
        self.register_buffer("perm", perm)
        self.register_buffer("g_idx", g_idx.to(torch.int32).contiguous())  # in kernel column order
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)
        for name in ("packed", "scale_zero", "rows", "scales", "zeros"):
            self.register_buffer(name, None)
        self.kernel_group = 0
        self.int8_group = 0  # group size the grouped int8 kernel can use (uint8 rows), else 0
        self.int4_layout = None  # torch's int4 byte layout on this CPU, where the packed bytes use it
        # exact group parameters for the dense path (fp16 scales and integer zeros are lossless)
        self.scales = _compact(weight.scales, torch.float16)
        self.zeros = _compact(weight.zeros, torch.uint8)
        self.q_shift = 0
        int4 = pack_int4(q, weight.scales, weight.zeros, g_idx, weight.bits) if weight.bits <= 4 else None
        if int4 is not None:
            self.packed, self.scale_zero, self.kernel_group = int4.packed, int4.scale_zero, int4.group
            layout = detect_layout()
            back = unpack_int4_layout(int4.packed, self.out_features, self.in_features, layout) if layout else None
            if back is not None and torch.equal(back.to(torch.int32), q.to(torch.int32) + q_shift(self.bits)):
                self.q_shift = q_shift(self.bits)  # the packed bytes hold q + shift
                self.layout, self.int4_layout = "int4pack", layout  # the dense path reads the same bytes: one copy
                return
        # integer rows for the dense path (the int4 kernel still serves decode where it applies)
        if weight.bits <= 4 and self.in_features % 2 == 0:
            self.rows, self.layout = pack_nibbles(q), "nibbles"
        else:
            self.rows, self.layout = q.to(torch.uint8).contiguous(), "uint8"
            group = uniform_group(g_idx)
            if group is not None and group % 16 == 0 and self.zeros.dtype == torch.uint8:
                self.scales = self.scales.float().contiguous()  # what the int8 kernel reads (one copy)
                self.int8_group = group

    # -- the content back -------------------------------------------------------------------
    def int_weight(self) -> IntWeight:
        """The integers and group parameters, in the checkpoint's column order."""
        if self.layout == "int4pack":
            q = unpack_int4_layout(self.packed, self.out_features, self.in_features,
                                   self.int4_layout).to(torch.int32) - self.q_shift
        else:
            q = (unpack_nibbles(self.rows) if self.layout == "nibbles" else self.rows).to(torch.int32)
        scales, zeros = self.scales.float(), self.zeros.float()
        g_idx = self.g_idx
        if self.perm is not None:
            inv = torch.argsort(self.perm)
            q, g_idx = q[:, inv], g_idx[inv]
        return IntWeight(q, scales, zeros, g_idx, self.bits)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.int_weight().dequantize().to(dtype)

    # -- compute ---------------------------------------------------------------------------
    def path_for(self, rows: int, dtype: torch.dtype, device: torch.device) -> str:
        if device.type != "cpu":
            return "dense"
        cap = torch.backends.cpu.get_cpu_capability()
        if (self.int4_layout is not None and rows <= C_INT4_MAX_ROWS.get(cap, 0)
                and native.load("int4_gemm") is not None):
            return "int4c"  # decode-sized calls: fp32 math on the packed bytes
        if (self.packed is not None and cap != "DEFAULT"
                and rows <= INT4_KERNEL_MAX_ROWS.get((dtype, self.dequant is not dequant_int4_columns), 0)):
            return "int4"  # decode-sized calls: bf16 activations through torch's int4 kernel
        if (self.int8_group and device.type == "cpu" and rows <= INT8_KERNEL_MAX_ROWS
                and native.load("int8_group_gemm") is not None):
            return "int8"  # decode-sized calls: fp32 math on the uint8 rows
        return "dense"

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.perm is not None:
            x2 = x2.index_select(-1, self.perm)
        path = self.path_for(x2.shape[0], x.dtype, x.device)
        if path == "int4":
            y = int4_matmul(x2, Int4Packed(self.packed, self.scale_zero, self.kernel_group))
        elif path == "int4c":
            y = native.int4_matmul(x2, self.packed, self.out_features, self.int4_layout.block, self.int4_layout.split,
                                   self.scales, self.zeros, self.q_shift, self.group_size).to(x.dtype)
        elif path == "int8":
            y = native.int8_group_matmul(x2, self.rows, self.scales, self.zeros, self.int8_group).to(x.dtype)
        elif self.layout == "int4pack":
            dequant = self.dequant if x2.dtype != torch.float32 else native_first(self.dequant)
            y = int4_dense_matmul(x2, self.packed, self.scales, self.zeros, self.group_size, self.q_shift,
                                  dequant=dequant, layout=self.int4_layout)
        elif self.int8_group and (y := native.int8_dense_matmul(x2, self.rows, self.scales, self.zeros,
                                                               self.int8_group, DENSE_BLOCK_ELEMS)) is not None:
            pass
        else:
            y = rows_dense_matmul(x2, self.rows, self.layout == "nibbles", self.scales, self.zeros, self.g_idx)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, layout={self.layout}{'/' + self.int4_layout.name if self.int4_layout else ''}, int4_kernel={self.packed is not None}, int8_kernel={bool(self.int8_group)}")

