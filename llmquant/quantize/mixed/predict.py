"""The predicted cost of an allocation at a given average bits — what the quality search uses
between measured attempts.

Reads the sensitivity JSON ({"layers": [{"name", "in_features", "out_features", "options":
[{"bits", "group_size", "bytes", "cost", "seconds"}]}], ...}); each entry is one allocation unit
whose in/out features are already totals over its modules (weights = in_features * out_features).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .allocate import Option, allocate, budget_bytes, by_type, reachable_bits, total_cost

Allocator = Literal["sensitivity", "by-type"]
ALLOCATORS: tuple[str, ...] = ("sensitivity", "by-type")


@dataclass(frozen=True)
class Predictor:
    names: list[str]
    units: list[list[Option]]
    n_weights: int
    allocator: Allocator = "sensitivity"

    @classmethod
    def from_dict(cls, data: dict[str, Any], allocator: str = "sensitivity") -> Predictor:
        if allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {allocator!r}; expected one of {', '.join(ALLOCATORS)}")
        layers = data.get("layers") or []
        if not layers:
            raise ValueError("sensitivity data has no layers")
        names = [str(l["name"]) for l in layers]
        units = [[Option(bits=int(o["bits"]), group_size=int(o["group_size"]), bytes=int(o["bytes"]),
                         cost=float(o["cost"]), seconds=float(o.get("seconds", 0.0)))
                  for o in l["options"]] for l in layers]
        n_weights = sum(int(l["in_features"]) * int(l["out_features"]) for l in layers)
        return cls(names=names, units=units, n_weights=n_weights, allocator=allocator)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path, variant: Any) -> Predictor:
        """`variant.allocator` picks the policy ("sensitivity" when the variant has none)."""
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data, getattr(variant, "allocator", "sensitivity") or "sensitivity")

    def reachable(self) -> tuple[float, float]:
        """(bits/weight with every unit at its smallest option, at its largest)."""
        return reachable_bits([[o.bytes for o in opts] for opts in self.units], self.n_weights)

    def smallest_bytes(self) -> int:
        return sum(min(o.bytes for o in opts) for opts in self.units)

    def choose_bytes(self, budget: int) -> list[int]:
        """The option per unit the allocator picks within `budget` bytes (ValueError: it cannot)."""
        if self.allocator == "by-type":
            return by_type(self.names, self.units, budget)
        return allocate(self.units, budget)

    def choose(self, bits: float) -> list[int]:
        """The option per unit the variant's allocator picks at this average bits/weight."""
        return self.choose_bytes(budget_bytes(bits, self.n_weights))

    def cost(self, bits: float) -> float:
        """Predicted total cost (sum of the chosen options' costs) at this average bits/weight."""
        return total_cost(self.units, self.choose(bits))
