"""Which modules a weight-only variant quantizes, and with which settings.

Targets are the nn.Linear layers inside the decoder blocks (lm_head only when asked);
embeddings and norms are never quantized. Per-module overrides are matched in order with
re.search against the module's full name; the first match wins.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from .config import WeightOnlyVariant

BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks")


@dataclass(frozen=True)
class LayerSettings:
    bits: int
    group_size: int
    sym: bool

    def effective_group(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: (dotted path, ModuleList)."""
    for path in BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return path, obj
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__} (looked for {', '.join(BLOCK_PATHS)})"
    )


def settings_for(name: str, variant: WeightOnlyVariant) -> LayerSettings | None:
    """The settings for module `name`, or None when an override skips it."""
    for o in variant.overrides:
        if re.search(o.pattern, name):
            if o.skip:
                return None
            return LayerSettings(
                bits=o.bits if o.bits is not None else variant.bits,
                group_size=o.group_size if o.group_size is not None else variant.group_size,
                sym=o.sym if o.sym is not None else variant.sym,
            )
    return LayerSettings(variant.bits, variant.group_size, variant.sym)


def target_linears(model: nn.Module, variant: WeightOnlyVariant) -> dict[str, tuple[nn.Linear, LayerSettings]]:
    prefix, blocks = find_blocks(model)
    found: dict[str, tuple[nn.Linear, LayerSettings]] = {}
    for i, block in enumerate(blocks):
        for sub, mod in block.named_modules():
            if isinstance(mod, nn.Linear):
                name = f"{prefix}.{i}.{sub}"
                s = settings_for(name, variant)
                if s is not None:
                    found[name] = (mod, s)
    if variant.quantize_lm_head:
        head = model.get_output_embeddings()
        if isinstance(head, nn.Linear):
            s = settings_for("lm_head", variant)
            if s is not None:
                found["lm_head"] = (head, s)
    return found


def allowed_group_sizes(in_features: set[int]) -> str:
    g = 0
    for f in in_features:
        g = math.gcd(g, f)
    divisors = [d for d in range(8, g + 1) if g % d == 0 and d & (d - 1) == 0]
    return "-1 or a divisor of " + str(g) + (f" (e.g. {', '.join(map(str, divisors))})" if divisors else "")
