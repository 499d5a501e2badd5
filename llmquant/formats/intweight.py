"""The logical content of a weight-only quantized Linear, independent of any file layout.

Every packed format (GPTQ v1/v2, AWQ GEMM, compressed-tensors pack-quantized) unpacks to
an IntWeight, and every inference module is built from one:
  w[o, i] = scales[g_idx[i], o] * (q[o, i] - zeros[g_idx[i], o])
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..quantize.grid import dequantize_groups


@dataclass(frozen=True)
class IntWeight:
    q: Tensor  # [out, in] int32, values in [0, 2**bits)
    scales: Tensor  # [n_groups, out] float (fp16-exact when it came from a checkpoint)
    zeros: Tensor  # [n_groups, out] float: true zero points
    g_idx: Tensor  # [in] int32: group of each input column
    bits: int

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    @property
    def in_features(self) -> int:
        return self.q.shape[1]

    @property
    def n_groups(self) -> int:
        return self.scales.shape[0]

    def dequantize(self) -> Tensor:
        return dequantize_groups(self.q, self.scales, self.zeros, self.g_idx)
