"""bitsandbytes' variant config (the recipe's `method: bnb`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...schema import Dtype
from ..config import VariantBase


class BnbVariant(VariantBase):
    """bitsandbytes through transformers' BitsAndBytesConfig: LLM.int8 or 4-bit NF4/FP4.

    int8 is LLM.int8(): int8 weights per row, activations quantized to int8 per token at run
    time except the input columns holding a value >= `threshold`, which stay in floating point.
    """

    method: Literal["bnb"]
    mode: Literal["int8", "nf4", "fp4"] = "nf4"
    threshold: float = Field(6.0, ge=0, description="LLM.int8 outlier threshold (int8 only); 0 disables the decomposition")
    skip_modules: list[str] | None = Field(
        None, description="modules left unquantized (default: transformers' choice, the output head)")
    double_quant: bool = Field(False, description="also quantize the 4-bit absmax constants (nf4/fp4 only)")
    compute_dtype: Dtype | None = Field(None, description="dtype of the 4-bit matmul (nf4/fp4 only); default float32")
    quant_storage: Literal["uint8", "float16", "bfloat16", "float32"] = Field(
        "uint8", description="dtype the packed 4-bit weights are stored in (nf4/fp4 only)")

    @model_validator(mode="after")
    def _mode_fields(self) -> "BnbVariant":
        four_bit = {"double_quant", "compute_dtype", "quant_storage"} & self.model_fields_set
        if self.mode == "int8" and four_bit:
            raise ValueError(f"{', '.join(sorted(four_bit))} only apply to mode nf4 or fp4, not int8")
        if self.mode != "int8" and "threshold" in self.model_fields_set:
            raise ValueError(f"threshold only applies to mode int8, not {self.mode}")
        return self

    @property
    def bits(self) -> int:
        return 8 if self.mode == "int8" else 4

    @property
    def group_size(self) -> int | None:
        return None if self.mode == "int8" else 64  # bitsandbytes' 4-bit blocks of 64 weights
