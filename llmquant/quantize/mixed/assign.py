"""From sensitivities and a budget to GPTQ settings: the option chosen per unit (allocate.py), the
base setting the checkpoint's quantization_config states, and exact-name overrides (written as
GPTQModel/vLLM `dynamic` rules) for every unit that differs from it."""

from __future__ import annotations

import re
from collections import Counter

from ...errors import UserError
from ...formats.vllm_compat import MARLIN_GROUPS, MARLIN_TYPES
from ..config import ModuleOverride
from .allocate import bits_per_weight, budget_bytes
from .config import MixedVariant
from .predict import Predictor
from .units import _FUSED_OF


def budget_of(variant: MixedVariant, table: dict) -> int:
    """The bytes the quantized Linears may take: from `bits` per weight or `size_mb` (1e6 bytes)."""
    b = variant.budget
    if b.bits is not None:
        return budget_bytes(b.bits, Predictor.from_dict(table).n_weights)
    if b.size_mb is not None:
        return int(b.size_mb * 1e6)
    raise UserError(f"variants ({variant.name}): budget.{b.kind} is a quality bound: the run searches sizes for it "
                    "(llmquant run); quantizing directly needs budget.bits or budget.size_mb")


def choose(variant: MixedVariant, table: dict) -> list[int]:
    """The option index chosen per unit, within the budget (the same choice the quality search's
    Predictor makes at that size)."""
    predictor, budget = Predictor.from_dict(table, variant.allocator), budget_of(variant, table)
    try:
        return predictor.choose_bytes(budget)
    except ValueError as e:
        raise UserError(f"variants ({variant.name}): budget.{variant.budget.kind}: {budget} bytes cannot hold the "
                        f"quantized layers (the smallest candidates take {predictor.smallest_bytes()} bytes; {e})"
                        ) from None


def marlin_eligible(bits: int, group_size: int, sym: bool) -> bool:
    return (bits, sym) in MARLIN_TYPES and group_size in MARLIN_GROUPS


def base_setting(chosen: list[tuple[int, int]], sym: bool) -> tuple[int, int]:
    """The (bits, group_size) the checkpoint's quantization_config states; the other units get
    `dynamic` overrides.

    The most common choice (fewest rules), except: vLLM picks its GPTQ method from the base config
    alone — gptq_marlin when the base is 4/8-bit symmetric with a marlin group size — and applies
    the `dynamic` overrides inside the method it picked (gptq_utils); gptq_marlin cannot run 2/3-bit
    layers (TYPE_MAP), so vllm_compat.gptq_verdict calls that `dynamic-not-marlin`, a blocker. When
    any unit is not marlin-eligible, the base is the most common non-marlin choice: vLLM then picks
    its `gptq` method (GPTQConfig: 2/3/4/8 bits) for every layer. That keeps the checkpoint
    loadable at the price of marlin's speed on its 4/8-bit layers (and float16 activations only).
    """
    counts = Counter(chosen)
    odd = [c for c in chosen if not marlin_eligible(c[0], c[1], sym)]
    pool = Counter(odd) if odd else counts
    return max(pool, key=lambda c: (pool[c], -chosen.index(c)))


def unit_pattern(modules: list[str], fused: str | None = None) -> str:
    """An exact-name pattern for a unit's modules, matching vLLM's fused name too (re.search and
    re.match alike: `model\\.layers\\.3\\.self_attn\\.(?:q_proj|k_proj|v_proj|qkv_proj)$`)."""
    parent = modules[0].rpartition(".")[0]
    if len(modules) == 1 and fused is None:
        return rf"(?:^|\.){re.escape(modules[0])}$"
    leaves = [m.rpartition(".")[2] for m in modules] + ([fused.rpartition(".")[2]] if fused else [])
    return rf"(?:^|\.){re.escape(parent)}\.(?:{'|'.join(leaves)})$"


def fused_name(modules: list[str]) -> str | None:
    """vLLM's name of the fused layer a multi-module unit forms."""
    leaf = modules[0].rpartition(".")[2]
    return f"{modules[0].rpartition('.')[0]}.{_FUSED_OF[leaf]}" if len(modules) > 1 and leaf in _FUSED_OF else None


def overrides(table: dict, chosen: list[int], base: tuple[int, int]) -> list[ModuleOverride]:
    """One override per unit whose chosen setting is not the base."""
    out = []
    for entry, i in zip(table["layers"], chosen):
        o = entry["options"][i]
        if (o["bits"], o["group_size"]) != base:
            out.append(ModuleOverride(pattern=unit_pattern(entry["modules"], fused_name(entry["modules"])),
                                      bits=o["bits"], group_size=o["group_size"]))
    return out


def allocation(variant: MixedVariant, table: dict, chosen: list[int]) -> dict:
    """The summary's record of an allocation (per unit and totals)."""
    units = []
    for entry, i in zip(table["layers"], chosen):
        o = entry["options"][i]
        units.append({"unit": entry["name"], "bits": o["bits"], "group_size": o["group_size"], "bytes": o["bytes"],
                      "cost": o["cost"]})
    total = sum(u["bytes"] for u in units)
    return {"allocator": variant.allocator, "estimate": variant.estimate, "budget": {variant.budget.kind:
            getattr(variant.budget, variant.budget.kind)}, "budget_bytes": budget_of(variant, table),
            "total_bytes": total, "average_bits": round(bits_per_weight(total, Predictor.from_dict(table).n_weights), 4),
            "predicted_cost": sum(u["cost"] for u in units), "units": units}
