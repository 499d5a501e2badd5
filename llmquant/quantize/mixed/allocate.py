"""Choosing one setting per allocation unit under a byte budget: the pure math of mixed precision.

An allocation unit is a group of Linears that must share one setting (e.g. q/k/v fused by vLLM);
each has a list of `Option`s (bits, group size, exact stored bytes, predicted cost). Two policies:

- `allocate`: minimum total cost within the budget — a multiple-choice knapsack solved exactly
  by dynamic programming over a byte axis quantized to `size_unit` bytes, then `use_more_bits`
  spends what the rounding left over.
- `by_type`: the sensitivity-free baseline (llama.cpp `--target-bpw` / quant-mix style), where
  the tensor type alone decides who gets more bits.

Nothing here reads files or models; sizes come from `gptq_bytes`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

MAX_COLUMNS = 20_000  # DP table width: 224 units x 12 options x 20k columns runs in ~0.1 s


@dataclass(frozen=True)
class Option:
    """One candidate setting for one allocation unit."""

    bits: int  # 2, 3, 4, 8
    group_size: int  # 32, 64, 128, or -1 (one group over the whole input)
    bytes: int  # stored size of the unit at this setting
    cost: float  # predicted output error (>= 0), lower is better
    seconds: float = 0.0


# ---------------------------------------------------------------- sizes


def gptq_bytes(in_features: int, out_features: int, bits: int, group_size: int) -> int:
    """Exact GPTQ v1 storage of one [out, in] Linear (formats/gptq_v1.pack_layer), bias not counted.

    qweight int32 [in*bits/32, out], qzeros int32 [n_groups, out*bits/32 in whole words],
    scales fp16 [n_groups, out], g_idx int32 [in].
    """
    n_groups = 1 if group_size == -1 else math.ceil(in_features / group_size)
    qweight = math.ceil(in_features * bits / 32) * out_features * 4
    qzeros = n_groups * math.ceil(out_features * bits / 32) * 4
    scales = n_groups * out_features * 2
    g_idx = in_features * 4
    return qweight + qzeros + scales + g_idx


def bits_per_weight(total_bytes: int, n_weights: int) -> float:
    """Average stored bits per weight, scales, zeros and g_idx included."""
    return 8 * total_bytes / n_weights


def reachable_bits(option_bytes: list[list[int]], n_weights: int) -> tuple[float, float]:
    """(bits/weight with every unit at its smallest option, at its largest), from each unit's
    option sizes in bytes."""
    return (bits_per_weight(sum(min(u) for u in option_bytes), n_weights),
            bits_per_weight(sum(max(u) for u in option_bytes), n_weights))


def budget_bytes(bits: float, n_weights: int) -> int:
    """Inverse of `bits_per_weight` (floor); the tiny slack absorbs float error in round trips."""
    return math.floor(bits * n_weights / 8 + 1e-6)


# ---------------------------------------------------------------- shared helpers


def _check(units: list[list[Option]]) -> None:
    for i, opts in enumerate(units):
        if not opts:
            raise ValueError(f"allocation unit {i} has no options")


def _smallest(opts: list[Option]) -> int:
    return min(range(len(opts)), key=lambda j: (opts[j].bytes, opts[j].cost))


def _cheapest(opts: list[Option]) -> int:
    """Lowest cost; ties: fewer bytes."""
    return min(range(len(opts)), key=lambda j: (opts[j].cost, opts[j].bytes))


def _used(units: list[list[Option]], chosen: list[int]) -> int:
    return sum(opts[j].bytes for opts, j in zip(units, chosen))


def total_cost(units: list[list[Option]], chosen: list[int]) -> float:
    return float(sum(opts[j].cost for opts, j in zip(units, chosen)))


def _require_feasible(units: list[list[Option]], budget: int) -> int:
    floor = sum(opts[_smallest(opts)].bytes for opts in units)
    if floor > budget:
        raise ValueError(f"budget of {budget} bytes is below the smallest possible allocation "
                         f"({floor} bytes: every unit at its smallest option)")
    return floor


# ---------------------------------------------------------------- optimal allocation


def size_unit(units: list[list[Option]], budget: int, max_columns: int = MAX_COLUMNS) -> int:
    """Bytes per DP column, so the table spans the slack above the all-smallest allocation
    in at most `max_columns` columns.

    The unit is a multiple of the gcd of every option's bytes above its unit's smallest, so
    when the slack fits in `max_columns` gcd-steps the DP is exact (no rounding at all).
    """
    _check(units)
    floor = sum(opts[_smallest(opts)].bytes for opts in units)
    ceiling = sum(max(o.bytes for o in opts) for opts in units)
    slack = max(0, min(budget, ceiling) - floor)
    g = 0
    for opts in units:
        low = opts[_smallest(opts)].bytes
        for o in opts:
            g = math.gcd(g, o.bytes - low)
    g = max(g, 1)
    need = max(1, math.ceil(slack / max_columns))
    return g * math.ceil(need / g)


def allocate(units: list[list[Option]], budget: int, max_columns: int = MAX_COLUMNS) -> list[int]:
    """Index of the chosen option per unit minimizing sum(cost) subject to sum(bytes) <= budget.

    Multiple-choice knapsack by DP over extra bytes above the all-smallest allocation, in columns
    of `size_unit` bytes; each option's extra bytes are rounded UP to whole columns, so the result
    is feasible in exact bytes (`max_columns` bounds the table width). The rounding can only leave
    bytes unused; `use_more_bits` then spends them greedily. Ties: fewer bytes.
    """
    _check(units)
    floor = _require_feasible(units, budget)
    free = [_cheapest(opts) for opts in units]
    if _used(units, free) <= budget:
        return free
    unit = size_unit(units, budget, max_columns)
    cols = (budget - floor) // unit
    inf = np.inf
    dp = np.full(cols + 1, inf)  # dp[c]: min cost with exactly c columns of extra bytes
    dp[0] = 0.0
    picks = np.zeros((len(units), cols + 1), dtype=np.int16)
    for u, opts in enumerate(units):
        low = opts[_smallest(opts)].bytes
        new = np.full(cols + 1, inf)
        # option order (cost, bytes) so that among equal costs at one column the smaller wins
        for j in sorted(range(len(opts)), key=lambda j: (opts[j].cost, opts[j].bytes)):
            w = -(-(opts[j].bytes - low) // unit)  # ceil
            if w > cols:
                continue
            cand = dp[:cols + 1 - w] + opts[j].cost
            tail = new[w:]
            better = cand < tail
            np.copyto(tail, cand, where=better)
            np.copyto(picks[u, w:], j, where=better)
        dp = new
    best = float(dp.min())
    tol = 1e-12 * max(1.0, abs(best))
    c = int(np.flatnonzero(dp <= best + tol)[0])  # fewest columns among the optimal
    chosen = [0] * len(units)
    for u in range(len(units) - 1, -1, -1):
        j = int(picks[u, c])
        chosen[u] = j
        low = units[u][_smallest(units[u])].bytes
        c -= -(-(units[u][j].bytes - low) // unit)
    return use_more_bits(units, chosen, budget)


def use_more_bits(units: list[list[Option]], chosen: list[int], budget: int) -> list[int]:
    """Greedily upgrade units while exact bytes fit: each step takes the change with the best
    cost decrease per extra byte (a change that saves both cost and bytes first)."""
    _check(units)
    chosen = list(chosen)
    left = budget - _used(units, chosen)
    while True:
        best, best_key = None, None
        for u, opts in enumerate(units):
            cur = opts[chosen[u]]
            for j, o in enumerate(opts):
                gain, extra = cur.cost - o.cost, o.bytes - cur.bytes
                if gain <= 0 or extra > left:
                    continue
                ratio = math.inf if extra <= 0 else gain / extra
                key = (ratio, gain, -extra, -u, -j)
                if best_key is None or key > best_key:
                    best, best_key = (u, j), key
        if best is None:
            return chosen
        u, j = best
        left -= units[u][j].bytes - units[u][chosen[u]].bytes
        chosen[u] = j


def frontier(units: list[list[Option]], budgets: list[int]) -> list[tuple[int, float]]:
    """(bytes used, total cost) of the allocation at each budget.

    Monotone by construction: an allocation found for a smaller budget is feasible under a larger
    one, so a larger budget keeps it when the rounded DP at its own size unit did worse.
    """
    out: dict[int, tuple[int, float]] = {}
    best: tuple[int, float] | None = None
    for b in sorted(set(budgets)):
        chosen = allocate(units, b)
        here = (_used(units, chosen), total_cost(units, chosen))
        if best is None or here[1] < best[1] or (here[1] == best[1] and here[0] < best[0]):
            best = here
        out[b] = best
    return [out[b] for b in budgets]


# ---------------------------------------------------------------- sensitivity-free baseline

# Tensor-type tiers, highest priority first (llama.cpp gives attn_v and ffn_down more bits).
TYPE_TIERS: tuple[tuple[str, ...], ...] = (
    ("v_proj", "down_proj"),
    ("o_proj",),
    ("q_proj", "k_proj"),
    ("gate_proj", "up_proj"),
)
_BLOCK = re.compile(r"\.(\d+)(?:\.|$)")


def type_tier(name: str) -> int:
    """Tier of a unit: that of its highest-priority member (a fused q+k+v unit ranks as v_proj,
    since v cannot get more bits without q and k); unknown types come last."""
    parts = set(re.split(r"[.+]", name))
    for t, types in enumerate(TYPE_TIERS):
        if parts & set(types):
            return t
    return len(TYPE_TIERS)


def block_index(name: str) -> int | None:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def type_order(names: list[str]) -> list[int]:
    """Unit indices in by-type priority: tier, then distance of the block from the first/last
    block (edges first), then block index, then position."""
    blocks = [block_index(n) for n in names]
    last = max((b for b in blocks if b is not None), default=0)

    def key(i: int) -> tuple:
        b = blocks[i]
        edge = min(b, last - b) if b is not None else last + 1
        return (type_tier(names[i]), edge, b if b is not None else -1, i)

    return sorted(range(len(names)), key=key)


def by_type(names: list[str], units: list[list[Option]], budget: int) -> list[int]:
    """The sensitivity-free baseline; costs are ignored.

    Rule: every unit starts at its smallest option. Tiers are raised in `TYPE_TIERS` order
    (v_proj/down_proj, o_proj, q/k, gate/up, then anything else). Within a tier, rounds go over
    its units edge blocks first; each round raises every unit one step up its size ladder (options
    by bytes) where the step still fits the budget, and skips it where not. A tier is done when a
    round raises nothing; only then does the next tier start.
    """
    if len(names) != len(units):
        raise ValueError(f"{len(names)} names for {len(units)} allocation units")
    _check(units)
    _require_feasible(units, budget)
    ladders = [sorted(range(len(o)), key=lambda j, o=o: (o[j].bytes, -o[j].bits, o[j].group_size, j))
               for o in units]
    step = [0] * len(units)
    left = budget - sum(units[u][ladders[u][0]].bytes for u in range(len(units)))
    order = type_order(names)
    for tier in sorted({type_tier(names[i]) for i in order}):
        members = [i for i in order if type_tier(names[i]) == tier]
        raised = True
        while raised:
            raised = False
            for u in members:
                if step[u] + 1 >= len(ladders[u]):
                    continue
                extra = units[u][ladders[u][step[u] + 1]].bytes - units[u][ladders[u][step[u]]].bytes
                if extra <= left:
                    step[u] += 1
                    left -= extra
                    raised = True
    return [ladders[u][step[u]] for u in range(len(units))]
