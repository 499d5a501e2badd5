"""CPU kernels for weight-only integer Linears, as pure functions.

Two paths, chosen per call by the number of activation rows (see QuantLinear):
- int4: torch's `_weight_int4pack_mm_for_cpu` (tinygemm convention: w = (q - 8) * scale + zero
  per group of K; q in 0..15, so 2-, 3- and 4-bit weights all use it). Fast for a few rows
  (decode), slow for many (prefill) on this CPU class — measured in bench/kernels.py.
- dense: dequantize a block of output rows into the activation dtype and use a dense matmul.

Our content w = s * (q - z) maps onto the kernel exactly: w = s * (q - 8) + s * (8 - z).
Act-order (non-contiguous g_idx) is handled by permuting input columns so groups are contiguous.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .int4_layout import Int4Layout, detect_layout

KERNEL_GROUPS = (256, 128, 64, 32)  # group sizes _weight_int4pack_mm_for_cpu accepts
DENSE_BLOCK_ELEMS = 1 << 21  # weights dequantized at a time by the dense path

log = logging.getLogger("llmquant")


def compiled_dequant(max_shapes: int = 8) -> Callable[..., Tensor]:
    """dequant_int4_columns fused into one pass by torch.compile (bit-identical), falling back to
    eager, once, with a warning, where compilation is unavailable (no C++ compiler, unsupported
    platform). Compiled for static shapes: one compilation (a few seconds) per weight shape and
    output dtype on first use (a model has a handful), each 1.5-3x faster than one shape-generic
    compilation and 3-10x faster than the eager ops (bench/results/kernels-*.md). Shapes past
    `max_shapes` (torch's default recompile limit) run the eager ops."""
    compiled = torch.compile(_dequant_int4_columns_fusable, dynamic=False)
    shapes: set = set()  # compiled so far
    failed: list[bool] = [False]

    def run(blocks: Tensor, scales: Tensor, zeros: Tensor, shift: int, group: int, dtype: torch.dtype,
            split: bool = True) -> Tensor:
        args = (blocks, scales, zeros, shift, group, dtype, split)
        key = (tuple(blocks.shape), tuple(scales.shape), scales.dtype, zeros.dtype, shift, group, dtype, split)
        if failed[0] or (key not in shapes and len(shapes) >= max_shapes):
            return dequant_int4_columns(*args)
        try:
            out = compiled(*args)
        except Exception as e:  # torch._dynamo/inductor raise many types; eager is always correct
            log.warning("torch.compile of the int4 dequantization failed (%s); using eager kernels",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            failed[0] = True
            return dequant_int4_columns(*args)
        shapes.add(key)
        return out

    return run


def native_first(fallback: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """dequant_int4_columns from the C kernel (native.py; fp32 results, bit-identical) where it is
    available, else `fallback` (eager or compiled). On AVX2 the C kernel is ~3x faster than
    inductor's code for the same math; on AVX512 they are even (bench/results/kernels-*.md)."""
    from . import native

    def run(*args) -> Tensor:
        out = native.int4_dequant_columns(*args)
        return out if out is not None else fallback(*args)

    return run


def contiguous_order(g_idx: Tensor) -> Tensor | None:
    """The input-column permutation that makes groups contiguous, or None if they already are."""
    if bool(torch.all(g_idx[1:] >= g_idx[:-1])):
        return None
    return torch.argsort(g_idx.long(), stable=True)


def uniform_group(g_idx: Tensor) -> int | None:
    """The group size when groups are contiguous and equal (after any permutation), else None."""
    counts = torch.bincount(g_idx.long())
    if bool(torch.any(counts == 0)) or not bool(torch.all(counts == counts[0])):
        return None
    gs = int(counts[0])
    expected = torch.arange(g_idx.numel()) // gs
    return gs if torch.equal(g_idx.long(), expected) else None


def kernel_group(in_features: int, group: int | None) -> int | None:
    """A kernel group size dividing the quantization group (its scale then repeats), or None."""
    if group is None:
        return None
    for g in KERNEL_GROUPS:
        if group % g == 0 and in_features % g == 0:
            return g
    return None


@dataclass(frozen=True)
class Int4Packed:
    packed: Tensor  # uint8 [N, K / 2], torch's CPU int4 layout
    scale_zero: Tensor  # [K / group, N, 2] bf16: (scale, zero) per kernel group, tinygemm convention
    group: int


def q_shift(bits: int) -> int:
    """Offset added to b-bit integers before int4 packing so zero points sit near 8: the kernel's
    bf16 zero term s * (8 - z) then stays small instead of cancelling against (q - 8) * s."""
    return 8 - (1 << (bits - 1))


def pack_int4(q: Tensor, scales: Tensor, zeros: Tensor, g_idx: Tensor, bits: int) -> Int4Packed | None:
    """Pack [N, K] b-bit integers (b <= 4, groups contiguous) for the CPU int4 kernel, stored as
    q + q_shift(b); None where the kernel cannot take them."""
    n, k = q.shape
    group = kernel_group(k, uniform_group(g_idx))
    if group is None or bits > 4 or k % 2:
        return None
    shift = q_shift(bits)
    try:
        packed = torch._convert_weight_to_int4pack_for_cpu((q.to(torch.int32) + shift).contiguous(), 1)
    except RuntimeError:
        return None
    groups = g_idx.long()[::group]  # quantization group of each kernel group
    s = scales.float()[groups]  # [K / group, N]
    z = s * (8.0 - (zeros.float()[groups] + shift))
    return Int4Packed(packed, torch.stack([s, z], -1).to(torch.bfloat16).contiguous(), group)


def int4_matmul(x: Tensor, p: Int4Packed) -> Tensor:
    """x [M, K] @ Wᵀ through the int4 kernel. Activations go in as bf16 (the kernel's fp32
    variant is a slow reference loop on CPU); the result comes back in x's dtype."""
    xb = x.to(torch.bfloat16).contiguous()
    return torch._weight_int4pack_mm_for_cpu(xb, p.packed, p.group, p.scale_zero).to(x.dtype)


def unpack_int4_layout(packed: Tensor, n: int, k: int, layout: Int4Layout | None = None) -> Tensor | None:
    """The [N, K] integers back from torch's CPU int4 layout (`layout`, default: the one torch uses
    on this CPU, see int4_layout.py). None when the shape is not whole blocks or no layout is
    known; callers verify the result against known integers before relying on it."""
    layout = layout or detect_layout()
    return None if layout is None else layout.unpack(packed, n, k)


def dequant_int4_columns(blocks: Tensor, scales: Tensor, zeros: Tensor, shift: int, group: int,
                         dtype: torch.dtype, split: bool = True) -> Tensor:
    """A column slice of Wᵀ from torch's int4 layout: blocks [K, NB, B/2] bytes (see
    Int4Layout.blocks; `split` says how a byte's nibbles map to rows) -> [K, NB·B] in `dtype`.
    scales/zeros are [K/group, NB·B] (any dtype); the bytes hold q + shift. w = (q - zero) *
    scale in fp32 (exact for fp16 scales), then cast. Eager ops; compiled_dequant fuses the
    same math."""
    q = Int4Layout(blocks.shape[2] * 2, split).nibbles(blocks).to(torch.float32)
    return _scale_columns(q, scales, zeros, shift, group, dtype)


def _dequant_int4_columns_fusable(blocks: Tensor, scales: Tensor, zeros: Tensor, shift: int, group: int,
                                  dtype: torch.dtype, split: bool = True) -> Tensor:
    """dequant_int4_columns with the nibbles unpacked by a broadcast shift instead of a stack:
    torch.compile turns this form into a single pass over the bytes (unpack, subtract, scale,
    cast) while it materialises the stack; eager torch runs it slower."""
    q = Int4Layout(blocks.shape[2] * 2, split).nibbles_fusable(blocks).to(torch.float32)
    return _scale_columns(q, scales, zeros, shift, group, dtype)


def _scale_columns(q: Tensor, scales: Tensor, zeros: Tensor, shift: int, group: int, dtype: torch.dtype) -> Tensor:
    k, n = q.shape
    w = (q.reshape(k // group, group, n) - (zeros.float() + shift).unsqueeze(1)) * scales.float().unsqueeze(1)
    return w.reshape(k, n).to(dtype)


def int4_dense_matmul(x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group: int, shift: int = 0,
                      block_elems: int = DENSE_BLOCK_ELEMS,
                      dequant: Callable[..., Tensor] = dequant_int4_columns,
                      layout: Int4Layout | None = None) -> Tensor:
    """x [M, K] @ Wᵀ, dequantizing column slices of Wᵀ straight from the int4 layout (`layout`,
    default this CPU's; about `block_elems` weights at a time; the bytes hold q + shift) and
    using a plain matmul in x's dtype (AMX for bf16). `dequant` is dequant_int4_columns or a
    compiled version of it."""
    m, k = x.shape
    n = scales.shape[1]
    layout = layout or detect_layout()
    blocks = layout.blocks(packed, n, k) if layout is not None else None
    if blocks is None:
        raise ValueError(f"int4 bytes {tuple(packed.shape)} are not whole blocks of {layout} for [{n}, {k}]")
    nb, bn = blocks.shape[1], layout.block
    per = max(1, block_elems // (k * bn))
    if per >= nb:
        return x @ dequant(blocks, scales, zeros, shift, group, x.dtype, layout.split)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    for b0 in range(0, nb, per):
        b1 = min(nb, b0 + per)
        c0, c1 = b0 * bn, b1 * bn
        out[:, c0:c1] = x @ dequant(blocks[:, b0:b1], scales[:, c0:c1], zeros[:, c0:c1], shift, group, x.dtype,
                                    layout.split)
    return out


def pack_nibbles(q: Tensor) -> Tensor:
    """[N, K] integers < 16 (K even) as [N, K/2] bytes, low nibble first (our own simple layout)."""
    q8 = q.to(torch.uint8)
    return (q8[:, 0::2] | (q8[:, 1::2] << 4)).contiguous()


def unpack_nibbles(b: Tensor) -> Tensor:
    return torch.stack([b & 0xF, b >> 4], -1).reshape(b.shape[0], b.shape[1] * 2)


def dequant_rows(q_rows: Tensor, scales: Tensor, zeros: Tensor, g_idx: Tensor, dtype: torch.dtype) -> Tensor:
    """[R, K] weights for R output rows: scales/zeros are [n_groups, R] slices; math in fp32."""
    g = g_idx.long()
    return (scales.float()[g].t() * (q_rows.float() - zeros.float()[g].t())).to(dtype)


def rows_dense_matmul(x: Tensor, rows: Tensor, nibbles: bool, scales: Tensor, zeros: Tensor, g_idx: Tensor,
                      block_elems: int = DENSE_BLOCK_ELEMS) -> Tensor:
    """x [M, K] @ Wᵀ from integer rows (uint8, or nibbles), a block of output rows at a time."""
    n = rows.shape[0]
    k = x.shape[-1]
    step = max(1, block_elems // k)
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    for s in range(0, n, step):
        e = min(n, s + step)
        q = unpack_nibbles(rows[s:e]) if nibbles else rows[s:e]
        out[:, s:e] = x @ dequant_rows(q, scales[:, s:e], zeros[:, s:e], g_idx, x.dtype).t()
    return out
