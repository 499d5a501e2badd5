"""Round-to-nearest weight-only quantization (no calibration), saved as GPTQ v1.

One decoder block at a time: its weights are made present (read from the checkpoint files when
the model is a lazy skeleton), its Linears quantized and packed, the block written to the
streamed checkpoint and let go of, so memory does not grow with depth."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torch import nn

from ...formats.checkpoint import save_dtype
from ...formats.intweight import IntWeight
from ...formats.table import FORMATS
from ...formats.write import block_linears, packed_module
from .. import checkpoint_format
from ..base import CalibrationSet, QuantizeContext, QuantizeResult
from ..checkpoint_stream import CheckpointStream
from ..grid import group_index, quantize_rtn
from ..lazy import EagerBlocks
from ..metrics import relative_error
from ..targets import LayerSettings, find_blocks, target_linears
from .config import RTNVariant

log = logging.getLogger("llmquant")


def quantize_linear(name: str, linear: nn.Linear, s: LayerSettings, device: str) -> tuple[IntWeight, dict]:
    """One Linear rounded to nearest: its integer weight and report row."""
    t0 = time.perf_counter()
    w = linear.weight.detach().to(device)
    q, scales, zeros = quantize_rtn(w, s.bits, s.group_size, s.sym)
    layer = IntWeight(q.cpu(), scales.cpu(), zeros.cpu(), group_index(w.shape[1], s.group_size), s.bits)
    err = relative_error(w.cpu(), layer.dequantize())
    return layer, {"module": name, "bits": s.bits, "group_size": s.group_size,
                   "rel_error": err, "seconds": time.perf_counter() - t0}


class RTNQuantizer:
    method = "rtn"
    version = "1"

    def quantize(self, model: nn.Module, variant: RTNVariant, calib: CalibrationSet | None,
                 out_dir: Path, ctx: QuantizeContext) -> QuantizeResult:
        fmt = FORMATS[checkpoint_format(variant)]
        targets = target_linears(model, variant)
        residency = ctx.blocks or EagerBlocks()
        prefix, blocks = find_blocks(model)
        stream = CheckpointStream(out_dir, model, save_dtype(model, variant.save_dtype), ctx.max_shard_bytes)
        with stream:  # a failure removes what was written
            report, block_seconds = [], []

            def quantize_module(name: str, module: nn.Module, advance) -> dict:
                packed = {}
                for full, (linear, s) in targets.items():  # the same module objects: loaded with `module`
                    if full == name or full.startswith(name + "."):
                        layer, row = quantize_linear(full, linear, s, ctx.device)
                        packed[full] = packed_module(fmt, layer, linear)
                        report.append(row)
                        advance(1, note=f"{full} err {row['rel_error']:.4f}")
                return packed

            head_packed = {}
            with ctx.progress.task(f"rtn {variant.name}: quantize", total=len(targets)) as advance:
                for i, block in enumerate(blocks):
                    name = f"{prefix}.{i}"
                    t0 = time.perf_counter()
                    residency.load(name, block, None)
                    stream.add_module(name, block, quantize_module(name, block, advance))
                    residency.unload(name, block)
                    block_seconds.append((i, time.perf_counter() - t0))
                if "lm_head" in targets:
                    head = targets["lm_head"][0]
                    residency.load("lm_head", head, None)
                    head_packed = quantize_module("lm_head", head, advance)
                    residency.unload("lm_head", head)
            stream.add_outer(model, residency, head_packed)
            qc, extra_json = fmt.checkpoint_config(variant, dict.fromkeys(targets), *block_linears(model))
            stream.finish(model, qc, ctx.tokenizer, extra_json)
        return QuantizeResult(fmt.writes, qc, report,
                              {"block_seconds": [round(t, 3) for _, t in block_seconds]})
