"""nn.Module for a Linear whose weight stays quantized in memory (any packed format).

Built from an IntWeight; keeps the integers and per-group parameters, never a dequantized
copy of the whole weight, and dequantizes on the fly in forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .intweight import IntWeight


class QuantLinear(nn.Module):
    def __init__(self, weight: IntWeight, bias: Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.bits = weight.bits
        self.register_buffer("q", weight.q.to(torch.uint8).contiguous())
        self.register_buffer("scales", weight.scales.float().contiguous())
        self.register_buffer("zeros", weight.zeros.float().contiguous())
        self.register_buffer("g_idx", weight.g_idx.to(torch.int32).contiguous())
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    @property
    def group_size(self) -> int:
        return self.in_features // self.scales.shape[0]

    def int_weight(self) -> IntWeight:
        return IntWeight(self.q.to(torch.int32), self.scales, self.zeros, self.g_idx, self.bits)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.int_weight().dequantize().to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        w = self.dequantized_weight(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"groups={self.scales.shape[0]}, bias={self.bias is not None}")
