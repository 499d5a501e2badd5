"""GPTQ's variant config (the recipe's `method: gptq`), and the solver options it shares with the
methods that run GPTQ underneath (`method: mixed`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...peers import METHOD_BACKENDS
from ...schema import Strict
from ..config import PeerBackedVariant, backend_field


class GPTQSolverOptions(Strict):
    """How the GPTQ solve runs (gptq_math.gptq_quantize's options), for any variant solved by GPTQ."""

    desc_act: bool = Field(False, description="act-order: quantize columns by decreasing Hessian diagonal")
    static_groups: bool = Field(False, description="choose every group's grid before any update")
    act_group_aware: bool = Field(True, description="group-aware reordering: solve groups by importance, "
                                                    "g_idx stays monotonic (gptqmodel's default; off with desc_act)")
    damp_percent: float = Field(0.01, gt=0, le=1, description="damping, as a fraction of the mean Hessian diagonal")
    true_sequential: bool = Field(True, description="later linears of a block calibrate on the quantized earlier ones")
    block_size: int = Field(128, ge=1, le=8192, description="columns per lazy-update block (speed only)")
    grid: Literal["minmax", "mse", "fullrange", "fullrange_mse"] = Field(
        "mse", description="each group's grid: mse (shrunk to the factor minimising Σ|w-ŵ|^2.4, the GPTQ "
                           "reference's option: W3 perplexity 0.68x on SmolLM2, at 1.8x its quantize time and "
                           "1.2x the solve at 7B shapes), or minmax (the group's range; gptqmodel's default); "
                           "fullrange / fullrange_mse: the same with a symmetric grid using all 2**bits levels "
                           "(AutoRound's; the larger side ends the grid, the scale carries the sign)")
    precision: Literal["auto", "float32", "float64"] = Field(
        "auto", description="arithmetic of the Hessians and the solve: float64 gives the same checkpoint on any "
                            "thread count (docs/methods.md), at 1.3x (SmolLM2) to 2x (a 7B solve) the time and "
                            "2x the Hessian memory; auto: "
                            "float64 on a CPU, float32 on a GPU (consumer GPUs run float64 at 1/64 the rate)")


SOLVER_FIELDS = tuple(GPTQSolverOptions.model_fields)


def solve_dtype(precision: str, device: str):
    """The torch dtype of GPTQ's Hessians and solve for a variant's `precision` on `device`."""
    import torch  # not at import: recipes validate without torch

    if precision == "auto":
        return torch.float32 if str(device).startswith("cuda") else torch.float64
    return getattr(torch, precision)


class GPTQVariant(PeerBackedVariant, GPTQSolverOptions):
    """GPTQ: each Linear solved layer by layer from calibration Hessians, with error feedback."""

    method: Literal["gptq"]
    backend: Literal[METHOD_BACKENDS["gptq"]] = backend_field()  # type: ignore[valid-type]
