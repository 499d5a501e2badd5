"""AWQ's variant config (the recipe's `method: awq`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...peers import METHOD_BACKENDS
from ..config import ModuleOverride, PeerBackedVariant, backend_field


AWQ_BITS = (4,)
"""Bit widths an AWQ GEMM checkpoint may have here: vLLM's awq kernel is 4-bit only and awq_marlin's
zero-point types are uint4 only (marlin_utils.query_marlin_supported_quant_types)."""


class AWQVariant(PeerBackedVariant):
    """AWQ: per-channel scales searched on calibration activations, folded into the previous op,
    then clipping and round-to-nearest on AWQ's asymmetric grid; an AWQ GEMM checkpoint."""

    method: Literal["awq"]
    zero_point: bool = Field(True, description="asymmetric grid with zero points (AWQ's default); false: symmetric")
    n_grid: int = Field(20, ge=1, le=1000, description="scale ratios tried per mapping (0, 1/n, ..., (n-1)/n)")
    duo_scaling: bool = Field(True, description="scales from activation and weight magnitudes (AutoAWQ's default)")
    clip: bool = Field(True, description="search a clipping bound per weight group after scaling")
    clip_n_grid: int = Field(20, ge=1, le=1000, description="clip bounds are max|w| * (1 - i / clip_n_grid)")
    clip_max_shrink: float = Field(0.5, ge=0, lt=1, description="largest fraction of max|w| clipped away")
    search_samples: int | None = Field(
        16, ge=1, description="how many calibration samples' worth of tokens score the scale search through the "
                              "attention (the first N samples, whole) and the MLP (every k-th token of every "
                              "sample, as many tokens); null: every sample. Statistics and clipping always use "
                              "every sample")
    propagate: Literal["quantized", "float"] = Field(
        "quantized", description="what the next block calibrates on: this block's outputs once it is quantized "
                                 "(one more forward per block), or its float outputs (AutoAWQ's and llm-awq's "
                                 "protocol: the float model's activations throughout)")
    coarse_grid: int | None = Field(
        5, ge=2, description="coarse-to-fine scale search: score this many evenly spaced ratios (and s = 1), then "
                             "the ratios around the best; null: score all n_grid ratios")
    calib_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="matmul dtype while calibrating (block forwards, statistics, search); auto: bfloat16 "
                            "where the device computes it fast (AMX/AVX512-BF16 CPUs, CUDA), else float32")
    max_chunk_memory_mb: int = Field(1024, ge=16, description="working memory bound of one search forward")
    backend: Literal[METHOD_BACKENDS["awq"]] = backend_field()  # type: ignore[valid-type]

    @field_validator("bits")
    @classmethod
    def _awq_bits(cls, v: int) -> int:
        if v not in AWQ_BITS:
            raise ValueError(f"an AWQ GEMM checkpoint holds 4-bit weights: vLLM's awq kernel takes 4 bits only and awq_marlin "
                             f"has zero-point kernels for uint4 only; use method gptq for {v}-bit weights")
        return v

    @field_validator("sym", mode="before")
    @classmethod
    def _no_sym(cls, v: Any) -> Any:
        raise ValueError("there is no sym option for AWQ; use zero_point (true: asymmetric, the default; false: symmetric)")

    @field_validator("quantize_lm_head")
    @classmethod
    def _no_head(cls, v: bool) -> bool:
        if v:
            raise ValueError("method awq does not quantize lm_head (no op before it to fold a scale into "
                             "when embeddings are tied); use method gptq or rtn for that")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[ModuleOverride]) -> list[ModuleOverride]:
        for i, o in enumerate(v):
            if o.bits is not None and o.bits not in AWQ_BITS:
                raise ValueError(f"overrides[{i}].bits: {o.bits}: an AWQ checkpoint has one bit width (4); "
                                 "use skip: true to keep a module unquantized")
            if o.sym is not None:
                raise ValueError(f"overrides[{i}].sym: an AWQ checkpoint has one zero_point setting for all modules")
        return v

    @model_validator(mode="after")
    def _sym_from_zero_point(self) -> "AWQVariant":
        object.__setattr__(self, "sym", not self.zero_point)  # the grid code reads `sym`
        return self
