"""Packing small integers into int32 words: the bit stream GPTQ-style checkpoints use.

Values are laid out as one continuous little-endian bit stream along the packed dimension:
value k of a run occupies bits [bits*k, bits*k + bits). For 2, 4 and 8 bits this is the
plain "32/bits values per word" layout; for 3 bits it is AutoGPTQ's 32-values-in-3-words
layout, where values straddle word boundaries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def unit(bits: int) -> tuple[int, int]:
    """(values, words) of the smallest run that fills whole int32 words."""
    l = math.lcm(bits, 32)
    return l // bits, l // 32


def _to_int32(x: Tensor) -> Tensor:
    """int64 holding uint32 bit patterns -> int32 with the same bits."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= (1 << 31), x - (1 << 32), x).to(torch.int32)


def pack_rows(values: Tensor, bits: int) -> Tensor:
    """Pack [K, N] integers in [0, 2**bits) along dim 0 into int32 [K * bits / 32, N]."""
    k, n = values.shape
    per, words = unit(bits)
    if k % per:
        raise ValueError(f"{k} rows cannot be packed at {bits} bits (need a multiple of {per})")
    v = values.to(torch.int64).reshape(k // per, per, n)
    if (v < 0).any() or (v >= (1 << bits)).any():
        raise ValueError(f"values out of range for {bits} bits")
    out = torch.zeros(k // per, words, n, dtype=torch.int64)
    for i in range(per):
        start = bits * i
        w, off = divmod(start, 32)
        out[:, w] |= (v[:, i] << off) & 0xFFFFFFFF
        if off + bits > 32:
            out[:, w + 1] |= v[:, i] >> (32 - off)
    return _to_int32(out.reshape(k // per * words, n))


def unpack_rows(packed: Tensor, bits: int, k: int | None = None) -> Tensor:
    """Inverse of pack_rows: int32 [K * bits / 32, N] -> int32 [K, N]."""
    rows, n = packed.shape
    per, words = unit(bits)
    if rows % words:
        raise ValueError(f"{rows} packed rows is not a whole number of {bits}-bit runs")
    p = (packed.to(torch.int64) & 0xFFFFFFFF).reshape(rows // words, words, n)
    mask = (1 << bits) - 1
    out = torch.empty(rows // words, per, n, dtype=torch.int64)
    for i in range(per):
        start = bits * i
        w, off = divmod(start, 32)
        val = p[:, w] >> off
        if off + bits > 32:
            val = val | (p[:, w + 1] << (32 - off))
        out[:, i] = val & mask
    out = out.reshape(rows // words * per, n).to(torch.int32)
    if k is not None and k != out.shape[0]:
        raise ValueError(f"expected {k} unpacked rows, found {out.shape[0]}")
    return out


def pack_cols(values: Tensor, bits: int) -> Tensor:
    """Pack [M, N] along dim 1 into int32 [M, N * bits / 32]."""
    return pack_rows(values.t(), bits).t().contiguous()


def unpack_cols(packed: Tensor, bits: int, n: int | None = None) -> Tensor:
    return unpack_rows(packed.t(), bits, n).t().contiguous()
