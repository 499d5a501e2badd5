"""SignRound's variant config (the recipe's `method: signround`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...peers import METHOD_BACKENDS
from ..config import PeerBackedVariant, backend_field


class SignRoundVariant(PeerBackedVariant):
    """SignRound (AutoRound's algorithm): each block's rounding offsets and per-group range factors learned by
    signed gradient descent on the block's output error."""

    method: Literal["signround"]
    backend: Literal[METHOD_BACKENDS["signround"]] = backend_field()  # type: ignore[valid-type]
    iters: int = Field(200, ge=0, le=100_000, description="signed-gradient steps per block (AutoRound's "
                                                         "default 200; 0: round to nearest on the same grid)")
    lr: float | None = Field(None, gt=0, le=1, description="step of the rounding offsets, decaying linearly to 0; "
                                                          "default 1/iters (AutoRound's)")
    minmax_lr: float | None = Field(None, ge=0, le=1, description="step of the per-group range factors; default "
                                                                 "lr; 0: the range stays each group's min..max")
    batch_size: int = Field(8, ge=1, le=4096, description="calibration samples per step (AutoRound's default 8); "
                                                         "the backward pass of one batch is the method's main "
                                                         "memory (llmquant plan shows it)")
    seed: int = Field(0, description="seed of the order the batches are drawn in")
    target: Literal["model", "block"] = Field(
        "model", description="what each block is fitted to, on the quantized model's activations: 'model', the "
                             "float model's outputs of that block (a second, float stream of activations is "
                             "carried; the block also corrects earlier blocks' error; AutoRound's); 'block', the "
                             "float block's outputs on the same inputs (GPTQ's objective; no second stream)")
    grid: Literal["fullrange", "minmax"] = Field(
        "fullrange", description="the symmetric grid: fullrange uses all 2**bits levels (AutoRound's int_sym: the "
                                 "larger side ends the grid, the scale carries the sign), minmax is GPTQ's "
                                 "(2*absmax/(2**bits-1) steps); asymmetric grids are GPTQ v1's either way")

    @model_validator(mode="after")
    def _limits(self) -> "SignRoundVariant":
        if self.quantize_lm_head:
            raise ValueError("quantize_lm_head is not supported by method signround (it tunes decoder blocks); "
                             "use method: gptq")
        return self

    def step_sizes(self) -> tuple[float, float]:
        """(lr of the rounding offsets, lr of the range factors) with the defaults resolved."""
        lr = self.lr if self.lr is not None else 1.0 / max(1, self.iters)
        return lr, (self.minmax_lr if self.minmax_lr is not None else lr)
