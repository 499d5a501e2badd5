"""Predictor: the sensitivity JSON read back, its reachable range, and cost falling with bits."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest

from llmquant.quantize.mixed.allocate import budget_bytes, gptq_bytes
from llmquant.quantize.mixed.predict import Predictor

SHAPES = [("model.layers.0.self_attn.q_proj+k_proj+v_proj", 64, 192), ("model.layers.0.mlp.down_proj", 256, 64),
          ("model.layers.1.self_attn.q_proj+k_proj+v_proj", 64, 192), ("model.layers.1.mlp.down_proj", 256, 64)]
SETTINGS = [(2, 64), (3, 64), (4, 64), (4, 32), (8, 64)]


def _cost(i: int, bits: int, group: int) -> float:
    return (i + 1) * 4.0 ** -bits * (1 + group / 128)


def _write(tmp_path):
    layers = [{"name": n, "in_features": i, "out_features": o,
               "options": [{"bits": b, "group_size": g, "bytes": gptq_bytes(i, o, b, g), "cost": _cost(k, b, g),
                            "seconds": 0.1} for b, g in SETTINGS]}
              for k, (n, i, o) in enumerate(SHAPES)]
    path = tmp_path / "sensitivity.json"
    path.write_text(json.dumps({"layers": layers, "method": "gptq"}))
    return path


def test_reachable_range_is_all_smallest_to_all_largest(tmp_path):
    p = Predictor.load(_write(tmp_path), SimpleNamespace())  # no .allocator: sensitivity
    n = sum(i * o for _, i, o in SHAPES)
    low = sum(gptq_bytes(i, o, 2, 64) for _, i, o in SHAPES)
    high = sum(gptq_bytes(i, o, 8, 64) for _, i, o in SHAPES)
    assert p.reachable() == pytest.approx((8 * low / n, 8 * high / n))
    assert p.allocator == "sensitivity" and p.n_weights == n


def test_cost_is_the_brute_force_optimum_and_falls_with_bits(tmp_path):
    p = Predictor.load(_write(tmp_path), SimpleNamespace(allocator="sensitivity"))
    lo, hi = p.reachable()
    grid = [lo + (hi - lo) * k / 30 for k in range(31)]
    costs = [p.cost(b) for b in grid]
    assert all(b <= a + 1e-15 for a, b in zip(costs, costs[1:]))
    assert costs[-1] < costs[0]
    for bits in grid[::5]:
        budget = budget_bytes(bits, p.n_weights)
        best = min(sum(_cost(k, *SETTINGS[j]) for k, j in enumerate(combo))
                   for combo in itertools.product(range(len(SETTINGS)), repeat=len(SHAPES))
                   if sum(gptq_bytes(i, o, *SETTINGS[j]) for (_, i, o), j in zip(SHAPES, combo)) <= budget)
        assert p.cost(bits) == pytest.approx(best)
    with pytest.raises(ValueError, match="below the smallest"):
        p.cost(lo - 0.1)


def test_by_type_predictor_is_never_better_than_sensitivity(tmp_path):
    path = _write(tmp_path)
    sens = Predictor.load(path, SimpleNamespace(allocator="sensitivity"))
    typ = Predictor.load(path, SimpleNamespace(allocator="by-type"))
    lo, hi = typ.reachable()
    for k in range(11):
        bits = lo + (hi - lo) * k / 10
        assert typ.cost(bits) >= sens.cost(bits) - 1e-15
    assert typ.cost(hi) == pytest.approx(sum(_cost(k, 8, 64) for k in range(len(SHAPES))))


def test_unknown_allocator_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown allocator"):
        Predictor.load(_write(tmp_path), SimpleNamespace(allocator="magic"))
