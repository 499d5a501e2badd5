"""Round-to-nearest weight-only quantization (no calibration), saved as GPTQ v1."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from ..formats import gptq_v1
from ..formats.intweight import IntWeight
from ..formats.checkpoint import save_dtype, write_checkpoint
from ..recipe import RTNVariant, WeightOnlyVariant
from .base import CalibrationSet, QuantizeContext
from .grid import group_index, quantize_rtn
from .targets import find_blocks, target_linears

log = logging.getLogger("llmquant")


def layer_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Relative Frobenius error ||W - Ŵ|| / ||W|| of a quantized weight."""
    return float((w.float() - w_hat).norm() / w.float().norm().clamp_min(1e-12))


def save_gptq_model(model: nn.Module, layers: dict[str, IntWeight], variant: WeightOnlyVariant,
                    tokenizer, out_dir: Path, extra_config: dict | None = None) -> dict:
    """Pack `layers` and write the whole model as a GPTQ v1 checkpoint. Returns the quant config."""
    packed = {}
    for name, layer in layers.items():
        tensors = gptq_v1.pack_layer(layer)
        bias = model.get_submodule(name).bias
        if bias is not None:
            tensors["bias"] = bias.detach()
        packed[name] = tensors
    prefix, _ = find_blocks(model)
    qc = gptq_v1.quantization_config(
        bits=variant.bits, group_size=variant.group_size, sym=variant.sym,
        lm_head="lm_head" in layers,
        dynamic=gptq_v1.dynamic_rules(variant.overrides, variant.bits, variant.group_size, variant.sym),
        **(extra_config or {}),
    )
    qc["modules_in_block_to_quantize"] = gptq_v1.modules_in_block(list(layers), prefix)
    quantize_config = {k: v for k, v in qc.items() if k != "modules_in_block_to_quantize"}
    write_checkpoint(out_dir, model, packed, qc, tokenizer, save_dtype(model, variant.save_dtype),
                     extra_json={"quantize_config.json": quantize_config})
    return qc


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
