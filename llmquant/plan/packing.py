"""Bytes of a quantized checkpoint, from layer shapes and the variant's settings (no weights).

Per quantized Linear (in -> out features, b bits, groups of g input columns, n = ceil(in / g)):
  gptq-v1:   qweight in*out*b/8 + qzeros n*out*b/8 + scales n*out*2 (fp16) + g_idx in*4
  awq-gemm:  qweight in*out*b/8 + qzeros n*out*b/8 + scales n*out*2
  bnb int8:  in*out + out*4 (fp32 row scales);  nf4/fp4: in*out/2 + in*out/64*4 (fp32 absmax),
             double_quant: in*out/64 + in*out/64/256*4
Everything not quantized is saved at the save dtype (2 bytes unless save_dtype float32).
"""

from __future__ import annotations

import math

from torch import nn

def grouped_bytes(in_f: int, out_f: int, bits: int, group: int, g_idx: bool) -> int:
    n = 1 if group == -1 else math.ceil(in_f / group)
    b = in_f * out_f * bits // 8 + n * out_f * bits // 8 + n * out_f * 2
    return b + (in_f * 4 if g_idx else 0)


def bnb_bytes(in_f: int, out_f: int, mode: str, double_quant: bool) -> int:
    n = in_f * out_f
    if mode == "int8":
        return n + out_f * 4
    absmax = n // 64 + n // 64 // 256 * 4 if double_quant else n // 64 * 4
    return n // 2 + absmax


def resident_bytes(in_f: int, out_f: int, bits: int, group: int) -> int:
    """What formats/qlinear.QuantLinear keeps for one layer: 4-bit bytes in torch's int4 layout for
    bits <= 4 (one copy), one byte per weight above; per group fp32 scale/zero pairs for the int4
    kernel, fp16 scales and uint8 zeros for the dense path; int32 g_idx."""
    n = 1 if group == -1 else math.ceil(in_f / group)
    weights = in_f * out_f // 2 if bits <= 4 else in_f * out_f
    return weights + n * out_f * (8 + 2 + 1) + in_f * 4


def save_bytes(variant) -> int:
    return 4 if getattr(variant, "save_dtype", "auto") == "float32" else 2


def checkpoint_bytes(model: nn.Module, variant, resident: bool = False) -> tuple[int, int]:
    """(bytes of the checkpoint's tensors, parameters left unquantized) for `variant` on `model`
    (a meta skeleton); `resident`: the quantized layers as loaded for computing instead."""
    params = {id(p): p.numel() for p in model.parameters()}  # tied weights once
    unquantized = sum(params.values())
    packed = 0
    if variant.method == "bnb":
        import re

        skip = variant.skip_modules if variant.skip_modules is not None else ["lm_head"]
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and not any(re.search(rf"(^|\.){re.escape(s)}($|\.)", name) for s in skip):
                packed += bnb_bytes(mod.in_features, mod.out_features, variant.mode, variant.double_quant)
                unquantized -= mod.weight.numel()
        return packed + unquantized * save_bytes(variant), unquantized
    from ..quantize import checkpoint_format
    from ..quantize.targets import target_linears

    g_idx = checkpoint_format(variant) == "gptq"  # AWQ GEMM has none
    for lin, s in target_linears(model, variant).values():
        packed += (resident_bytes(lin.in_features, lin.out_features, s.bits, s.group_size) if resident else
                   grouped_bytes(lin.in_features, lin.out_features, s.bits, s.group_size, g_idx))
        unquantized -= lin.weight.numel()
    return packed + unquantized * save_bytes(variant), unquantized
