"""Round-to-nearest weight-only quantization (no calibration), saved as GPTQ v1."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from ..formats import gptq_v1
from ..formats.intweight import IntWeight
from ..recipe import RTNVariant
from .base import CalibrationSet, QuantizeContext
from .grid import group_index, quantize_rtn
from .save import save_gptq_model
from .targets import target_linears

log = logging.getLogger("llmquant")


def layer_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Relative Frobenius error ||W - Ŵ|| / ||W|| of a quantized weight."""
    return float((w.float() - w_hat).norm() / w.float().norm().clamp_min(1e-12))


class RTNQuantizer:
    method = "rtn"
    version = "1"

    def quantize(self, model: nn.Module, variant: RTNVariant, calib: CalibrationSet | None,
                 out_dir: Path, ctx: QuantizeContext) -> dict:
        targets = target_linears(model, variant)
        layers: dict[str, IntWeight] = {}
        report = []
        with ctx.progress.task(f"rtn {variant.name}: quantize", total=len(targets)) as advance:
            for name, (linear, s) in targets.items():
                t0 = time.perf_counter()
                w = linear.weight.detach().to(ctx.device)
                q, scales, zeros = quantize_rtn(w, s.bits, s.group_size, s.sym)
                layer = IntWeight(q.cpu(), scales.cpu(), zeros.cpu(),
                                          group_index(w.shape[1], s.group_size), s.bits)
                err = layer_error(w.cpu(), layer.dequantize())
                layers[name] = layer
                report.append({"module": name, "bits": s.bits, "group_size": s.group_size,
                               "rel_error": err, "seconds": time.perf_counter() - t0})
                advance(1, note=f"{name} err {err:.4f}")
        qc = save_gptq_model(model, layers, variant, ctx.tokenizer, out_dir)
        return {"format": gptq_v1.FORMAT, "config": qc, "layers": report}
