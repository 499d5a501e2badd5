"""`method: mixed`: sensitivities (cached) -> allocation within the budget -> GPTQ with per-module
overrides. The GPTQ run is the gptq method's own quantizer, given the derived GPTQ variant; the
checkpoint is GPTQ v1 with `dynamic` rules (formats/gptq_v1.dynamic_rules)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ...errors import UserError
from ..base import CalibrationSet, QuantizeContext, QuantizeResult
from ..gptq.quantizer import GPTQQuantizer
from . import assign
from .config import MixedVariant, as_gptq
from .sensitivity import sensitivity

log = logging.getLogger("llmquant")


def planned_gptq(variant: MixedVariant, table: dict):
    """(the GPTQ variant that quantizes `variant` as allocated, the allocation record)."""
    chosen = assign.choose(variant, table)
    settings = [(e["options"][i]["bits"], e["options"][i]["group_size"]) for e, i in zip(table["layers"], chosen)]
    base = assign.base_setting(settings, variant.sym)
    gptq = as_gptq(variant, *base, assign.overrides(table, chosen, base))
    return gptq, assign.allocation(variant, table, chosen)


class MixedQuantizer:
    method = "mixed"
    version = "1"

    def quantize(self, model: nn.Module, variant: MixedVariant, calib: CalibrationSet | None,
                 out_dir: Path, ctx: QuantizeContext) -> QuantizeResult:
        if calib is None:
            raise UserError(f"variants: {variant.name}: method 'mixed' needs a 'calibration' section")
        where = ctx.cache_dir or ctx.work_dir or Path(out_dir)
        path, table = sensitivity(model, variant, calib, ctx, where)
        gptq, alloc = planned_gptq(variant, table)
        alloc["sensitivity"] = str(path)
        ctx.progress.message(f"{variant.name}: {alloc['average_bits']:.3f} bits per weight allocated "
                             f"({alloc['allocator']}, {len(gptq.overrides) - len(variant.overrides)} units off the "
                             f"base {gptq.bits}-bit group {gptq.group_size})")
        result = GPTQQuantizer().quantize(model, gptq, calib, out_dir, ctx)
        return QuantizeResult(result.format, result.config, result.layers, {**result.details, "allocation": alloc})
