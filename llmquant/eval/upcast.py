"""Scoring in float32 without a float32 copy of the model.

A 16-bit CPU evaluation re-scores its first windows in float32 (eval.check_windows) to report
what 16-bit compute costs. Loading the model in float32 for that doubles the peak (a 7B model:
27 GB before the 16-bit copy exists). When every dense tensor of the checkpoint is stored in one
16-bit dtype, the float32 model is exactly that 16-bit model upcast: the model is loaded in its
stored dtype, the check runs with each module's parameters upcast for its own forward and put
back after (`float32_compute`), then the model is cast to the compute dtype (fp16 -> bf16 rounds
exactly as fp16 -> fp32 -> bf16 does). The same numbers; one module's float32 copy resident at a
time.
Packed layers (QuantLinear) compute in their input's dtype already and are left alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

PACKED_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")  # GPTQ / AWQ packed layers (scales fp16)


def stored_dtype(checkpoint: Path) -> torch.dtype | None:
    """The 16-bit dtype every dense float tensor of a safetensors checkpoint is stored in (headers
    only), so that loading it in that dtype loses nothing; None when there is no single one."""
    from ..serve.artifact import tensor_table

    if not Path(checkpoint).is_dir() or not any(Path(checkpoint).glob("*.safetensors")):
        return None
    found = {dtype for name, (dtype, _) in tensor_table(Path(checkpoint)).items()
             if dtype in ("F16", "BF16", "F32", "F64") and not name.endswith(PACKED_SUFFIXES)}
    if len(found) != 1:
        return None
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(found.pop())


def _skipped(module: nn.Module) -> bool:
    from ..formats.qlinear import QuantLinear

    return isinstance(module, QuantLinear) or type(module).__module__.startswith("bitsandbytes")


@contextmanager
def float32_compute(model: nn.Module) -> Iterator[None]:
    """Within the block, every module with 16-bit parameters of its own computes with them
    upcast to float32 (restored after its forward, also on errors)."""
    handles = []

    def before(module: nn.Module, args):
        saved = []
        for p in module.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != torch.float32:
                saved.append((p, p.data))
                p.data = p.data.float()
        module._llmquant_upcast = saved

    def after(module: nn.Module, args, output):
        for p, data in getattr(module, "_llmquant_upcast", ()):
            p.data = data
        module._llmquant_upcast = ()

    for m in model.modules():
        if _skipped(m) or not any(p.is_floating_point() and p.dtype != torch.float32
                                  for p in m.parameters(recurse=False)):
            continue
        handles.append(m.register_forward_pre_hook(before))
        handles.append(m.register_forward_hook(after, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            for p, data in getattr(m, "_llmquant_upcast", ()):
                p.data = data
            if hasattr(m, "_llmquant_upcast"):
                del m._llmquant_upcast
