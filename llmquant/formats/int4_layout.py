"""Torch's CPU int4 packed layout, for whichever CPU capability torch dispatched to.

`torch._convert_weight_to_int4pack_for_cpu` turns [N, K] integers (0..15) into [N, K/2] bytes
whose arrangement depends on the kernel torch picked (aten/src/ATen/native/cpu/int4mm_kernel.cpp,
weight_to_int4pack_kernel): output rows go in blocks of B; for each k a block stores B/2 bytes.
- AVX512: B = 64, byte j holds row j (low nibble) and row j + 32 (high nibble): "split".
- AVX2: B = 32, split (rows j and j + 16).
- default (no vector kernel): B = 32, byte j holds rows 2j and 2j + 1: "adjacent".
A trailing partial block (N % B != 0) is always adjacent; we only read whole blocks.

Rather than trusting that table, `detect_layout` packs known integers once per capability and
finds which candidate reproduces them; QuantLinear still checks each weight it packs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Int4Layout:
    block: int  # output rows per block
    split: bool  # True: byte j = rows (j, j + block/2); False: rows (2j, 2j + 1)

    @property
    def name(self) -> str:
        return f"{'split' if self.split else 'adjacent'}{self.block}"

    def blocks(self, packed: Tensor, n: int, k: int) -> Tensor | None:
        """packed [N, K/2] as [K, N/B, B/2] bytes (column-slice order for the dense path), or None
        when N is not whole blocks or the sizes disagree."""
        if n % self.block or packed.numel() * 2 != n * k:
            return None
        return packed.reshape(n // self.block, k, self.block // 2).permute(1, 0, 2)

    def nibbles(self, blocks: Tensor) -> Tensor:
        """[K, NB, B/2] bytes -> [K, NB·B] integers, columns in output-row order (eager ops)."""
        k, nb, _ = blocks.shape
        low, high = blocks & 0xF, blocks >> 4
        q = torch.stack([low, high], 2 if self.split else 3)  # [K, NB, 2, B/2] or [K, NB, B/2, 2]
        return q.reshape(k, nb * self.block)

    def nibbles_fusable(self, blocks: Tensor) -> Tensor:
        """`nibbles` as a broadcast shift, which torch.compile fuses into one pass over the bytes."""
        k, nb, half = blocks.shape
        shape = (1, 1, 2, 1) if self.split else (1, 1, 1, 2)
        shift = torch.tensor([0, 4], dtype=torch.uint8, device=blocks.device).view(shape)
        q = (blocks.unsqueeze(2 if self.split else 3) >> shift) & 0xF
        return q.reshape(k, nb * self.block)

    def unpack(self, packed: Tensor, n: int, k: int) -> Tensor | None:
        """The [N, K] integers back (uint8), or None when the shape is not whole blocks."""
        b = self.blocks(packed, n, k)
        return None if b is None else self.nibbles(b).t().contiguous()


CANDIDATES = (Int4Layout(64, True), Int4Layout(32, True), Int4Layout(32, False), Int4Layout(64, False),
              Int4Layout(16, True), Int4Layout(16, False))


def detect_layout() -> Int4Layout | None:
    """The layout torch uses at the capability it dispatches to now; None if none matches (or the
    op is missing). Cached per capability: ATEN_CPU_CAPABILITY is read once per process, so this
    is one small probe per process."""
    return _detect(torch.backends.cpu.get_cpu_capability())


@functools.lru_cache(maxsize=None)
def _detect(capability: str) -> Int4Layout | None:
    n, k = 128, 64
    q = (torch.arange(n * k, dtype=torch.int64).reshape(n, k) * 7 + torch.arange(n).unsqueeze(1)) % 16
    try:
        packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
    except (RuntimeError, AttributeError):
        return None
    for layout in CANDIDATES:
        back = layout.unpack(packed, n, k)
        if back is not None and torch.equal(back.long(), q):
            return layout
    return None
