"""The mixed-precision variant's config (the recipe's `method: mixed`): GPTQ with bits and group
size chosen per layer from measured sensitivities, under one budget.

    - {name: mixed-4.5, method: mixed, budget: {bits: 4.5}}
    - {name: mixed-2pct, method: mixed, budget: {max_ppl_increase_pct: 2}}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...schema import Strict, check_group_size
from ..config import ModuleOverride, VariantBase
from ..gptq.config import GPTQSolverOptions

MIN_BITS, MAX_BITS = 2.0, 8.0
SIZE_BUDGETS = ("bits", "size_mb")
QUALITY_BOUNDS = ("max_ppl_increase_pct", "max_kld")


class MixedBudget(Strict):
    """Exactly one of: a size (average bits per weight, or MB of the quantized Linears) or a
    quality bound (the run searches the smallest size that meets it, by measuring)."""

    bits: float | None = Field(None, description="average bits per weight of the quantized Linears, counting "
                                                 "scales, zeros and g_idx (2 to 8)")
    size_mb: float | None = Field(None, gt=0, description="bytes of the quantized Linears in the checkpoint, in MB (1e6)")
    max_ppl_increase_pct: float | None = Field(None, gt=0, description="the smallest size whose perplexity is within "
                                                                        "this many percent of the baseline's")
    max_kld: float | None = Field(None, gt=0, description="the smallest size whose mean KL divergence from the "
                                                           "baseline is at most this")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: float | None) -> float | None:
        if v is not None and not MIN_BITS <= v <= MAX_BITS:
            raise ValueError(f"must be between {MIN_BITS:g} and {MAX_BITS:g} average bits per weight (GPTQ stores "
                             "2, 3, 4 or 8 bits per layer, plus its scales, zeros and g_idx)")
        return v

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in (*SIZE_BUDGETS, *QUALITY_BOUNDS) if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join((*SIZE_BUDGETS, *QUALITY_BOUNDS))}"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def kind(self) -> str:
        return next(k for k in (*SIZE_BUDGETS, *QUALITY_BOUNDS) if getattr(self, k) is not None)


class MixedVariant(VariantBase, GPTQSolverOptions):
    """GPTQ with per-layer bits: sensitivities (output error of each layer at each candidate setting)
    -> an allocation within the budget -> GPTQ with per-module overrides (a GPTQ v1 checkpoint with
    GPTQModel/vLLM `dynamic` rules)."""

    method: Literal["mixed"]
    budget: MixedBudget
    candidate_bits: list[Literal[2, 3, 4, 8]] = Field([2, 3, 4, 8], min_length=1)
    candidate_group_sizes: list[int] = Field([32, 64, 128], min_length=1, description="a layer admits those "
                                             "dividing its in_features (-1: one group per row)")
    allocator: Literal["sensitivity", "by-type"] = Field(
        "sensitivity", description="sensitivity: the least total predicted cost within the budget; by-type: "
                                   "llama.cpp-style tiers by tensor type, sensitivity-free (a baseline)")
    estimate: Literal["gptq", "rtn"] = Field("gptq", description="the quantizer whose output error is measured "
                                                                 "per setting (rtn: much cheaper)")
    weighting: Literal["fisher", "output"] = Field(
        "fisher", description="fisher: each layer's output error weighted by the loss's squared gradient there "
                              "(a predicted loss rise; one streamed backward pass); output: relative to the layer's "
                              "own output (no gradients)")
    fisher_samples: int = Field(16, ge=1, le=1024, description="weighting fisher: calibration sequences the "
                                                                "gradients are taken on")
    sym: bool = True
    overrides: list[ModuleOverride] = Field([], description="modules to leave unquantized ({pattern, skip: true})")
    max_attempts: int = Field(4, ge=1, le=12, description="quality bounds: attempts the search may measure")

    @field_validator("candidate_bits")
    @classmethod
    def _cbits(cls, v: list[int]) -> list[int]:
        return sorted(set(v))

    @field_validator("candidate_group_sizes")
    @classmethod
    def _cgroups(cls, v: list[int]) -> list[int]:
        return sorted({check_group_size(g) for g in v})

    @field_validator("overrides")
    @classmethod
    def _skip_only(cls, v: list[ModuleOverride]) -> list[ModuleOverride]:
        for o in v:
            if not o.skip or o.bits is not None or o.group_size is not None or o.sym is not None:
                raise ValueError("method mixed chooses bits and group sizes itself: an override may only skip "
                                 "modules ({pattern: ..., skip: true})")
        return v

    @property
    def quality_bound(self) -> tuple[str, float] | None:
        """(key, bound) when the budget is a quality bound (the run searches sizes), else None."""
        k = self.budget.kind
        return (k, float(getattr(self.budget, k))) if k in QUALITY_BOUNDS else None

    def sized_as(self):
        """The uniform GPTQ variant at least as large as any allocation of this one (the largest
        candidate bits, the smallest group size): what memory and disk plans size it by."""
        return as_gptq(self, max(self.candidate_bits), min(self.candidate_group_sizes, key=lambda g: g % 10**9))

    def with_bits(self, bits: float) -> "MixedVariant":
        """This variant at a size budget of `bits` average bits per weight. Not checked against the
        recipe's 2-8 range: a quality search may need every layer at 8 bits, whose scales and
        zeros take it above 8 (8-bit g64 is 8.5 bits per weight)."""
        return self.model_copy(update={"budget": MixedBudget.model_construct(bits=bits)})


def as_gptq(variant: MixedVariant, bits: int, group_size: int, overrides: list[ModuleOverride] = ()):
    """The GPTQ variant that quantizes like `variant` at base setting (bits, group_size), with
    `overrides` (per-module settings) after the variant's own skips."""
    from ..gptq.config import SOLVER_FIELDS, GPTQVariant

    return GPTQVariant(name=variant.name, method="gptq", save_dtype=variant.save_dtype, bits=bits,
                       group_size=group_size, sym=variant.sym, overrides=[*variant.overrides, *overrides],
                       **{k: getattr(variant, k) for k in SOLVER_FIELDS})
