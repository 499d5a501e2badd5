"""The mixed-precision allocator: exact optimum vs brute force, sizes vs packed tensors, baseline."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from llmquant.formats import gptq_v1
from llmquant.formats.intweight import IntWeight
from llmquant.quantize.grid import group_index, quantize_rtn
from llmquant.quantize.mixed.allocate import (
    Option, allocate, bits_per_weight, budget_bytes, by_type, frontier, gptq_bytes, size_unit, type_order,
    use_more_bits,
)


def _random_units(rng: random.Random, n_units: int, scale: int = 1000) -> list[list[Option]]:
    units = []
    for _ in range(n_units):
        units.append([Option(bits=rng.choice((2, 3, 4, 8)), group_size=rng.choice((32, 64, 128, -1)),
                             bytes=rng.randint(1, 20) * scale + rng.randint(0, scale - 1),
                             cost=round(rng.uniform(0, 10), 3)) for _ in range(rng.randint(3, 4))])
    return units


def _brute(units: list[list[Option]], budget: int) -> float | None:
    best = None
    for combo in itertools.product(*(range(len(o)) for o in units)):
        if sum(units[u][j].bytes for u, j in enumerate(combo)) <= budget:
            c = sum(units[u][j].cost for u, j in enumerate(combo))
            best = c if best is None else min(best, c)
    return best


def _bytes(units, chosen):
    return sum(units[u][j].bytes for u, j in enumerate(chosen))


def _byte_range(units):
    """(bytes with every unit at its smallest option, at its largest)."""
    return sum(min(o.bytes for o in u) for u in units), sum(max(o.bytes for o in u) for u in units)


def _cost(units, chosen):
    return sum(units[u][j].cost for u, j in enumerate(chosen))


def test_allocate_matches_brute_force_when_exact():
    rng = random.Random(0)
    for _ in range(150):
        units = _random_units(rng, 5)
        low, high = _byte_range(units)
        for budget in sorted(rng.randint(low, high + 500) for _ in range(4)):
            chosen = allocate(units, budget)
            assert _bytes(units, chosen) <= budget
            assert _cost(units, chosen) == pytest.approx(_brute(units, budget), abs=1e-9)


def test_allocate_with_coarse_columns_stays_feasible_and_near_optimal():
    """Force rounding (few DP columns): never over budget, and no worse than the optimum at the
    budget shrunk by one column per unit (what rounding each option up can cost at most)."""
    rng = random.Random(1)
    coarse = 0
    for _ in range(100):
        units = _random_units(rng, 5)
        low, high = _byte_range(units)
        for budget in sorted(rng.randint(low, high) for _ in range(4)):
            step = size_unit(units, budget, 40)
            coarse += step > 1
            chosen = allocate(units, budget, max_columns=40)
            assert _bytes(units, chosen) <= budget
            shrunk = _brute(units, budget - len(units) * step)
            if shrunk is not None:
                assert _cost(units, chosen) <= shrunk + 1e-9
            assert _cost(units, chosen) >= _brute(units, budget) - 1e-9
    assert coarse > 200  # the rounding was exercised


def test_budget_above_everything_gives_min_cost_with_fewest_bytes():
    units = [[Option(4, 128, 100, 1.0), Option(8, 128, 200, 0.5), Option(8, 32, 300, 0.5)],
             [Option(2, 64, 50, 3.0), Option(3, 64, 70, 3.0)]]
    assert allocate(units, 10_000) == [1, 0]


def test_tie_prefers_fewer_bytes_inside_the_dp():
    # the cheapest options do not fit together; two allocations tie at cost 2.0
    units = [[Option(2, 128, 10, 2.0), Option(4, 128, 40, 1.0), Option(4, 64, 20, 1.0)],
             [Option(2, 128, 10, 1.0), Option(4, 128, 30, 0.0)]]
    chosen = allocate(units, 45)  # optimum: 1.0 + 1.0 via [2, 0] (30 bytes) beats [0, 1] (40 bytes, 2.0)
    assert chosen == [2, 0] and _cost(units, chosen) == 2.0


def test_infeasible_budget_is_a_clear_error():
    units = [[Option(2, 64, 100, 1.0), Option(4, 64, 180, 0.1)]] * 3
    with pytest.raises(ValueError, match="below the smallest possible allocation"):
        allocate(units, 299)
    with pytest.raises(ValueError, match="below the smallest"):
        by_type(["model.layers.0.mlp.down_proj"] * 3, units, 299)
    assert allocate(units, 300) == [0, 0, 0]


def test_frontier_is_monotone():
    rng = random.Random(2)
    for _ in range(20):
        units = _random_units(rng, 6)
        low, high = _byte_range(units)
        budgets = list(range(low, high + 1, max(1, (high - low) // 40)))
        pts = frontier(units, budgets)
        for (b, (used, cost)) in zip(budgets, pts):
            assert used <= b
        costs = [c for _, c in pts]
        assert all(b <= a + 1e-12 for a, b in zip(costs, costs[1:]))
        assert costs[-1] == pytest.approx(_brute(units, budgets[-1]))


def test_use_more_bits_spends_leftover_bytes():
    units = [[Option(2, 64, 100, 5.0), Option(4, 64, 200, 1.0), Option(8, 64, 400, 0.5)],
             [Option(2, 64, 100, 4.0), Option(4, 64, 150, 3.0)]]
    # from all-smallest with 250 spare bytes: best ratio is unit0 2->4 (4.0/100), then unit1 (1.0/50)
    assert use_more_bits(units, [0, 0], 450) == [1, 1]
    assert use_more_bits(units, [0, 0], 300) == [1, 0]
    assert use_more_bits(units, [0, 0], 200) == [0, 0]


def test_gptq_bytes_equals_packed_tensors():
    torch.manual_seed(0)
    for bits in (2, 3, 4, 8):
        for in_f, out_f, gs in ((128, 64, 32), (256, 96, 64), (128, 32, -1), (256, 64, 128)):
            w = torch.randn(out_f, in_f)
            q, s, z = quantize_rtn(w, bits, gs, False)
            packed = gptq_v1.pack_layer(IntWeight(q, s, z, group_index(in_f, gs), bits))
            assert gptq_bytes(in_f, out_f, bits, gs) == sum(t.nbytes for t in packed.values())


def test_bits_per_weight_and_budget_round_trip():
    n = 4096 * 4096
    b = gptq_bytes(4096, 4096, 4, 128)
    # 4 bits + fp16 scale and 4-bit zero per 128 weights + an int32 g_idx per input column
    assert bits_per_weight(b, n) == pytest.approx(4 + (16 + 4) / 128 + 32 / 4096)
    assert budget_bytes(bits_per_weight(b, n), n) == b
    assert budget_bytes(3.5, 1000) == 437


NAMES = [f"model.layers.{i}.{t}" for i in range(4) for t in
         ("self_attn.q_proj+k_proj+v_proj", "self_attn.o_proj", "mlp.gate_proj+up_proj", "mlp.down_proj")]


def test_by_type_order_is_tier_then_edges():
    order = [NAMES[i] for i in type_order(NAMES)]
    # fused qkv ranks with its v_proj (tier 0, with down_proj), then o_proj, then gate/up
    tiers = [0 if ("v_proj" in n or "down_proj" in n) else 1 if "o_proj" in n else 3 for n in order]
    assert tiers == sorted(tiers) and tiers.count(0) == 8
    for tier_names in (order[:8], order[8:12], order[12:]):
        blocks = [int(n.split(".")[2]) for n in tier_names]
        assert blocks == sorted(blocks, key=lambda b: (min(b, 3 - b), b))  # edges (0, 3) before 1, 2
    assert order[:2] == ["model.layers.0.self_attn.q_proj+k_proj+v_proj", "model.layers.0.mlp.down_proj"]


def test_by_type_raises_tiers_in_order_within_budget():
    ladder = [(2, 100), (3, 140), (4, 180), (8, 340)]
    units = [[Option(b, 64, s, cost=float(10 - b)) for b, s in reversed(ladder)] for _ in NAMES]  # listed largest first
    base = 100 * len(NAMES)
    tier0 = [i for i, n in enumerate(NAMES) if "v_proj" in n or "down_proj" in n]
    o_proj = [i for i, n in enumerate(NAMES) if "o_proj" in n]
    # enough to lift tier 0 fully (8 units x 240) and two o_proj units one step (2 x 40)
    budget = base + 8 * 240 + 2 * 40 + 39
    chosen = by_type(NAMES, units, budget)
    assert _bytes(units, chosen) <= budget
    bits = [units[i][j].bits for i, j in enumerate(chosen)]
    assert all(bits[i] == 8 for i in tier0)
    assert sorted(bits[i] for i in o_proj) == [2, 2, 3, 3]
    assert {bits[o_proj[0]], bits[o_proj[3]]} == {3}  # blocks 0 and 3 first
    assert all(bits[i] == 2 for i, n in enumerate(NAMES) if "gate_proj" in n)
    # costs are ignored: reversing them changes nothing
    flipped = [[Option(o.bits, o.group_size, o.bytes, -o.cost + 100) for o in u] for u in units]
    assert by_type(NAMES, flipped, budget) == chosen


def test_llama_7b_scale_runs_and_is_feasible():
    """224 units (32 blocks x 7 Linears of a 7B Llama) x 12 options (bits 2/3/4 x 4 group sizes)."""
    rng = random.Random(3)
    shapes = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096), "self_attn.v_proj": (4096, 4096),
              "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (4096, 11008), "mlp.up_proj": (4096, 11008),
              "mlp.down_proj": (11008, 4096)}
    names, units = [], []
    for block in range(32):
        for mod, (i, o) in shapes.items():
            names.append(f"model.layers.{block}.{mod}")
            s = rng.uniform(0.5, 2.0)
            units.append([Option(b, g, gptq_bytes(i, o, b, g), s * i * o * 4.0 ** -b * (1 + (g if g > 0 else i) / 512))
                          for b in (2, 3, 4) for g in (32, 64, 128, -1)])
    assert len(units) == 224 and all(len(u) == 12 for u in units)
    smallest = [min(range(12), key=lambda j: u[j].bytes) for u in units]
    low = _bytes(units, smallest)
    high = sum(max(o.bytes for o in u) for u in units)
    budget = (low + high) // 2
    chosen = allocate(units, budget)
    assert len(chosen) == 224 and _bytes(units, chosen) <= budget
    assert _cost(units, chosen) < _cost(units, smallest)
    assert _bytes(units, by_type(names, units, budget)) <= budget
