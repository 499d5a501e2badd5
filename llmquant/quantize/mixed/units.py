"""Allocation units: the Linears that must share one quantization setting, and the settings each
admits. vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj and loads one scheme per fused
layer (vllm_compat.FUSED), so those form one unit; every other Linear is a unit of its own."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...formats.gptq_v1 import shape_problem
from ...formats.vllm_compat import FUSED
from ..targets import target_linears
from .config import MixedVariant, as_gptq

_FUSED_OF = {leaf: fused for fused, leaves in FUSED.items() for leaf in leaves}


@dataclass(frozen=True)
class Unit:
    name: str  # "model.layers.3.self_attn.q_proj+k_proj+v_proj"
    modules: tuple[str, ...]  # full module names, in model order
    shapes: tuple[tuple[int, int], ...]  # (in_features, out_features) per module
    settings: tuple[tuple[int, int], ...]  # admissible (bits, group_size), every member storable

    @property
    def in_features(self) -> int:
        return self.shapes[0][0]

    @property
    def out_features(self) -> int:
        """Summed over the members (they share in_features), so in * out is the unit's weight count."""
        return sum(o for _, o in self.shapes)

    @property
    def fused(self) -> str | None:
        """vLLM's name of the fused layer ("...self_attn.qkv_proj"), or None for a single Linear."""
        if len(self.modules) == 1:
            return None
        parent, leaf = self.modules[0].rsplit(".", 1)
        return f"{parent}.{_FUSED_OF[leaf]}"


def _settings(shapes: list[tuple[int, int]], bits: list[int], groups: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple((b, g) for b in bits for g in groups
                 if all(shape_problem(i, o, b, g) is None for i, o in shapes))


def make_units(shapes: dict[str, tuple[int, int]], bits: list[int], groups: list[int]) -> list[Unit]:
    """Units from {module name: (in, out)} in model order: members of a fused set that share a
    parent and in_features are grouped (a partial set, e.g. k_proj skipped, still shares)."""
    keyed: dict[tuple, list[str]] = {}
    for name, (i, _) in shapes.items():
        parent, _, leaf = name.rpartition(".")
        key = (parent, _FUSED_OF[leaf], i) if leaf in _FUSED_OF else (name,)
        keyed.setdefault(key, []).append(name)
    units = []
    for names in keyed.values():
        parent = names[0].rpartition(".")[0]
        label = names[0] if len(names) == 1 else f"{parent}." + "+".join(n.rpartition(".")[2] for n in names)
        sh = [shapes[n] for n in names]
        units.append(Unit(label, tuple(names), tuple(sh), _settings(sh, bits, groups)))
    return units


def model_units(model: nn.Module, variant: MixedVariant) -> list[Unit]:
    """The units of `model` (a real or meta model) that `variant` quantizes (its skips left out)."""
    targets = target_linears(model, as_gptq(variant, 4, -1))
    shapes = {n: (lin.in_features, lin.out_features) for n, (lin, _) in targets.items()}
    return make_units(shapes, variant.candidate_bits, variant.candidate_group_sizes)


def check_model(variant: MixedVariant, model_type: str | None, model: nn.Module) -> str | None:
    """Preflight (METHODS check): every unit admits a candidate, and a size budget is reachable."""
    from .allocate import gptq_bytes, reachable_bits

    units = model_units(model, variant)
    if not units:
        return "no Linear layers left to quantize (all skipped by overrides)"
    bare = [u for u in units if not u.settings]
    if bare:
        u = bare[0]
        return (f"candidate_bits/candidate_group_sizes: no candidate can store {u.name} ([out, in] "
                f"[{u.out_features}, {u.in_features}]); add a group size dividing {u.in_features}")
    weights = sum(u.in_features * u.out_features for u in units)
    lo, hi = reachable_bits([[sum(gptq_bytes(i, o, b, g) for i, o in u.shapes) for b, g in u.settings]
                             for u in units], weights)
    b = variant.budget
    need = b.bits if b.bits is not None else (b.size_mb * 1e6 * 8 / weights if b.size_mb is not None else None)
    if need is not None and need < lo:
        field = "bits" if b.bits is not None else "size_mb"
        return (f"budget.{field}: {need:.3f} bits per weight is below the smallest these candidates reach on this "
                f"model ({lo:.3f}, up to {hi:.3f})")
    return None
