"""The smallest size within a quality bound, found by measuring: the search a mixed variant with
`budget: {max_ppl_increase_pct: X}` or `{max_kld: X}` runs (pure functions; run_search.py runs it).

Each attempt is the same variant at a size budget (average bits per weight), quantized and
evaluated on the run's protocol. The measured value (perplexity increase in %, or mean KLD)
falls as the bits grow. The search keeps a bracket: the largest bits that missed the bound and
the smallest that met it. The next attempt comes from the sensitivities where there are any:
the measured value is taken as proportional to the allocation's predicted cost (the sum of its
layers' output errors), scaled by the nearest attempt, and the smallest bits whose scaled
prediction is under the bound (with a margin) is tried; otherwise, or when that lands outside
the bracket, the bracket's middle. It stops when the bracket is narrower than `tolerance` bits
the prediction sees no smaller size that meets the bound, or the attempts run out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FIRST_BITS = 4.5
"""Where a search starts when nothing is known: between uniform 4 and 8 bits, nearer 4, where
most models' +1-2 % perplexity lies."""

MARGIN = 0.9
"""Aim the predicted value at this fraction of the bound: the prediction is a proportional model."""


@dataclass(frozen=True)
class Attempt:
    bits: float  # the size budget tried (average bits per weight of the quantized Linears)
    value: float  # what was measured against the bound

    def meets(self, bound: float) -> bool:
        return self.value <= bound


def bracket(attempts: list[Attempt], bound: float, lo: float, hi: float) -> tuple[float, float]:
    """(largest bits that missed, smallest bits that met), starting from the reachable range."""
    missed = [a.bits for a in attempts if not a.meets(bound)]
    met = [a.bits for a in attempts if a.meets(bound)]
    return max(missed, default=lo), min(met, default=hi)


def _smallest_bits_under(target: float, predict: Callable[[float], float], lo: float, hi: float,
                         steps: int = 30) -> float | None:
    """The smallest b in [lo, hi] with predict(b) <= target (predict non-increasing), or None."""
    if predict(hi) > target:
        return None
    if predict(lo) <= target:
        return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        if predict(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def next_bits(attempts: list[Attempt], bound: float, lo: float, hi: float, *,
              predict: Callable[[float], float] | None = None, tolerance: float = 0.1) -> float | None:
    """The next size budget to try, or None when the search is done.

    `lo`/`hi`: the smallest and largest average bits the candidates can reach."""
    if not attempts:
        return min(max(FIRST_BITS, lo), hi)
    low, high = bracket(attempts, bound, lo, hi)
    met_any = any(a.meets(bound) for a in attempts)
    if met_any and high - low <= tolerance:
        return None
    if not met_any and hi - low <= tolerance:
        return None if low >= hi else hi  # the largest reachable size is the last thing to try
    guess = None
    if predict is not None:
        last = attempts[-1]
        base = predict(last.bits)
        if base > 0 and last.value > 0:
            scale = last.value / base
            # from a miss aim under the bound; from a hit, at it (a smaller size that still meets it)
            aim = bound if last.meets(bound) else MARGIN * bound
            guess = _smallest_bits_under(aim / scale, predict, lo, hi)
            if met_any and guess is not None and guess >= high - tolerance:
                return None  # the prediction sees no smaller size that meets the bound
    inside = guess is not None and low + tolerance / 2 <= guess <= high - tolerance / 2
    b = guess if inside else (low + high) / 2
    return round(b, 2)


def chosen(attempts: list[Attempt], bound: float) -> tuple[Attempt, bool]:
    """(the attempt the variant keeps, whether it meets the bound): the smallest that meets it,
    else the largest tried (closest to meeting it)."""
    met = [a for a in attempts if a.meets(bound)]
    if met:
        return min(met, key=lambda a: a.bits), True
    return max(attempts, key=lambda a: a.bits), False
