"""RTN's variant config (the recipe's `method: rtn`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..awq.config import AWQ_BITS
from ..config import WeightOnlyVariant


class RTNVariant(WeightOnlyVariant):
    """Round-to-nearest: each group's min/max (or absmax) sets its grid; no calibration."""

    _omitted_defaults: ClassVar[dict[str, Any]] = {"format": "gptq"}
    method: Literal["rtn"]
    format: Literal["gptq", "awq"] = Field(
        "gptq", description="checkpoint format: gptq (GPTQ v1) or awq (AWQ GEMM: 4-bit, zero points stored, "
                            "for runtimes that take AWQ)")

    @model_validator(mode="after")
    def _format_limits(self) -> "RTNVariant":
        if self.format == "awq":
            if self.bits not in AWQ_BITS:
                raise ValueError(f"format awq holds {'/'.join(map(str, AWQ_BITS))}-bit weights, not {self.bits}-bit; "
                                 "use format: gptq")
            if any(o.bits not in (None, *AWQ_BITS) or o.group_size is not None or o.sym is not None
                   for o in self.overrides):
                raise ValueError("format awq has one bit width, group size and grid for every module (vLLM reads "
                                 "them once): overrides may only skip modules")
            if self.quantize_lm_head:
                raise ValueError("format awq does not store a quantized lm_head; use format: gptq")
        return self
