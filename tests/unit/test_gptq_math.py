"""GPTQ math on synthetic layers, checked against an independent float64 reference written here."""

from functools import partial
import math

import pytest
import torch

from llmquant.quantize.gptq.gptq_math import (
    NotPositiveDefinite,
    accumulate_hessian,
    gptq_quantize,
    inverse_cholesky_upper,
)
from llmquant.quantize.metrics import output_error
from llmquant.quantize.grid import dequantize_groups, grid_params, group_index, quantize_rtn

from test_grid import reference_mse_grid


def correlated_inputs(n: int, d: int, seed: int = 0, rank: int = 6) -> torch.Tensor:
    """Inputs dominated by a few shared directions (as real activations are), plus noise and
    a few loud channels."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis
    x += 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, :3] *= 4
    return x


def reference_gptq(W, H, bits, gs, sym, damp, desc_act=False, static=False, gar=False, grid=grid_params):
    """Optimal Brain Quantization one column at a time, the way the paper derives it: an explicit
    inverse Hessian, the OBS update of the remaining weights, then Gaussian elimination of the
    quantized column from H⁻¹ — no Cholesky factor, no blocks, float64 throughout."""
    W = W.double().clone()
    H = H.double().clone()
    out_f, n = W.shape
    gs = n if gs == -1 else gs
    maxq = 2 ** bits - 1
    dead = torch.diagonal(H) == 0
    for i in torch.nonzero(dead).flatten().tolist():
        H[i, i] = 1
        W[:, i] = 0
    order = list(range(n))
    d = torch.diagonal(H).tolist()
    if desc_act:
        order = sorted(range(n), key=lambda c: -d[c])
    elif gar and gs != n:  # whole groups by their loudest column, columns inside by loudness
        groups = sorted(range(n // gs), key=lambda g: -max(d[g * gs:(g + 1) * gs]))
        order = [c for g in groups for c in sorted(range(g * gs, (g + 1) * gs), key=lambda c: -d[c])]
    H = H + damp * torch.diagonal(H).mean() * torch.eye(n, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    fixed = {}
    if gs == n or static:
        for g in range(n // gs):
            fixed[g] = grid(W[:, g * gs:(g + 1) * gs], bits, sym)
    Q = torch.zeros_like(W)
    g_idx = [0] * n
    params = {}
    for k, col in enumerate(order):
        if fixed:
            g = col // gs if static else 0
            s, z = fixed[g]
        else:
            g = col // gs if gar else k // gs
            if k % gs == 0:  # the group's grid, from the current (updated) weights of its columns
                params[g] = grid(W[:, order[k:k + gs]], bits, sym)
            s, z = params[g]
        g_idx[col] = g
        s, z = s.double(), z.double()
        q = torch.clamp(torch.round(W[:, col] / s) + z, 0, maxq)
        Q[:, col] = s * (q - z)
        err = (W[:, col] - Q[:, col]) / Hinv[col, col]
        rest = order[k + 1:]
        W[:, rest] -= torch.outer(err, Hinv[col, rest])
        Hinv = Hinv - torch.outer(Hinv[:, col], Hinv[col, :]) / Hinv[col, col]
    return Q, torch.tensor(g_idx)


CASES = [
    dict(bits=4, gs=16, sym=True),
    dict(bits=3, gs=16, sym=False),
    dict(bits=2, gs=32, sym=False),
    dict(bits=8, gs=-1, sym=True),
    dict(bits=4, gs=16, sym=False, desc_act=True),
    dict(bits=4, gs=16, sym=True, desc_act=True, static=True),
    dict(bits=3, gs=32, sym=True, static=True),
    dict(bits=4, gs=16, sym=False, gar=True),
    dict(bits=3, gs=16, sym=True, gar=True, static=True),
    dict(bits=3, gs=16, sym=True, gar=True, grid="mse"),
    dict(bits=2, gs=32, sym=False, static=True, grid="mse"),
    dict(bits=3, gs=16, sym=True, gar=True, grid="fullrange"),
    dict(bits=4, gs=32, sym=True, grid="fullrange"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("block", [16, 24, 128])
def test_blocked_solution_equals_unblocked_reference(case, block):
    out_f, n = 24, 64
    g = torch.Generator().manual_seed(1)
    W = torch.randn(out_f, n, generator=g, dtype=torch.float64)
    X = correlated_inputs(256, n)
    H = 2 * X.T @ X / 256
    H[5, :] = 0
    H[:, 5] = 0  # a dead input
    ref_Q, ref_g = reference_gptq(W, H, case["bits"], case["gs"], case["sym"], 0.01,
                                  case.get("desc_act", False), case.get("static", False), case.get("gar", False),
                                  {"mse": reference_mse_grid, "fullrange": partial(grid_params, full_range=True)}
                                  .get(case.get("grid"), grid_params))
    out = gptq_quantize(W, H, case["bits"], case["gs"], case["sym"], desc_act=case.get("desc_act", False),
                        static_groups=case.get("static", False), act_group_aware=case.get("gar", False),
                        damp_percent=0.01, block_size=block, grid=case.get("grid", "minmax"))
    assert out.dead_columns == 1
    assert out.weight.g_idx.tolist() == ref_g.tolist()
    torch.testing.assert_close(out.weight.dequantize().double(), ref_Q, rtol=0, atol=1e-9)
    assert (out.weight.q[:, 5] == out.weight.zeros[out.weight.g_idx[5].long()].round().int()).all()


def test_float32_path_matches_float64_reference_closely():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(32, 64, generator=g)
    X = correlated_inputs(512, 64, seed=3)
    H = (2 * X.T @ X / 512)
    ref_Q, _ = reference_gptq(W, H, 4, 16, True, 0.01)
    out = gptq_quantize(W, H.float(), 4, 16, True)
    mismatch = (out.weight.dequantize().double() - ref_Q).abs().gt(1e-4).float().mean()
    assert mismatch < 0.01  # float32 rounding flips only a few borderline integers


def test_hessian_running_average_matches_direct_formula():
    x = torch.randn(10, 7, 12, dtype=torch.float64)
    H, n = None, 0
    for chunk in (x[:3], x[3:4], x[4:]):
        H, n = accumulate_hessian(H, n, chunk)
    assert n == 10
    flat = x.reshape(-1, 12)
    torch.testing.assert_close(H, 2 * flat.T @ flat / 10)
    H2, n2 = accumulate_hessian(None, 0, flat.float())
    assert n2 == 1 and H2.dtype == torch.float32


def test_float64_hessian_from_float32_inputs_in_chunks(monkeypatch):
    import llmquant.quantize.gptq.gptq_math as gm

    monkeypatch.setattr(gm, "HESSIAN_CHUNK_BYTES", 12 * 8 * 5)  # 5 rows of 12 float64 at a time
    x = torch.randn(6, 7, 12)
    H, n = accumulate_hessian(None, 0, x[:2], torch.float64)
    H, n = accumulate_hessian(H, n, x[2:])
    assert n == 6 and H.dtype == torch.float64
    flat = x.double().reshape(-1, 12)
    torch.testing.assert_close(H, 2 * flat.T @ flat / 6, rtol=1e-14, atol=1e-14)
    # a float64 Hessian makes the solve float64, even for float32 weights
    W = torch.randn(8, 12)
    out64 = gptq_quantize(W, H, 4, -1, True)
    ref_Q, _ = reference_gptq(W, H, 4, -1, True, 0.01)
    torch.testing.assert_close(out64.weight.dequantize().double(), ref_Q, rtol=0, atol=1e-6)


def test_gptq_output_error_below_rtn_on_correlated_inputs():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(64, 128, generator=g)
    X = correlated_inputs(2048, 128, seed=5).float()
    H, _ = accumulate_hessian(None, 0, X)
    for bits in (3, 4):
        out = gptq_quantize(W, H, bits, 32, sym=False)
        q, s, z = quantize_rtn(W, bits, 32, sym=False)
        rtn = dequantize_groups(q, s, z, group_index(128, 32))
        gptq_err = ((W - out.weight.dequantize()) @ X.T).norm() / (W @ X.T).norm()
        rtn_err = ((W - rtn) @ X.T).norm() / (W @ X.T).norm()
        assert gptq_err < 0.7 * rtn_err
        # the reported error is the same quantity, computed from H
        assert out.output_error == pytest.approx(float(gptq_err), rel=1e-3)
        assert output_error(W, rtn, H) == pytest.approx(float(rtn_err), rel=1e-3)


def test_act_order_and_static_groups_give_consistent_g_idx():
    g = torch.Generator().manual_seed(6)
    W = torch.randn(16, 64, generator=g)
    X = correlated_inputs(512, 64, seed=7).float() * torch.linspace(0.1, 3, 64)  # distinct loudness
    H, _ = accumulate_hessian(None, 0, X)
    order = torch.argsort(torch.diagonal(H), descending=True, stable=True)

    plain = gptq_quantize(W, H, 4, 16, True).weight
    assert plain.g_idx.tolist() == [i // 16 for i in range(64)]

    act = gptq_quantize(W, H, 4, 16, True, desc_act=True).weight
    assert sorted(act.g_idx.tolist()) == [i // 16 for i in range(64)]  # 16 columns per group
    assert act.g_idx[order].tolist() == [i // 16 for i in range(64)]  # loudest columns first
    assert act.g_idx.tolist() != plain.g_idx.tolist()

    gar = gptq_quantize(W, H, 4, 16, True, act_group_aware=True).weight
    assert gar.g_idx.tolist() == [i // 16 for i in range(64)]  # groups keep their columns
    assert not torch.equal(gar.q, plain.q)  # but are solved in another order

    static = gptq_quantize(W, H, 4, 16, True, desc_act=True, static_groups=True).weight
    assert static.g_idx.tolist() == [i // 16 for i in range(64)]
    # static grids are those of the untouched weights
    _, s, _ = quantize_rtn(W, 4, 16, True)
    torch.testing.assert_close(static.scales, s)


def test_dead_columns_get_zero_weight_and_do_not_break_the_solve():
    W = torch.randn(8, 32)
    X = torch.randn(100, 32)
    X[:, [0, 7, 8]] = 0
    H, _ = accumulate_hessian(None, 0, X)
    out = gptq_quantize(W, H, 4, 16, False, desc_act=True)
    assert out.dead_columns == 3
    deq = out.weight.dequantize()
    assert deq[:, [0, 7, 8]].abs().max() == 0
    assert torch.isfinite(deq).all() and math.isfinite(out.output_error)


def test_indefinite_hessian_raises_not_positive_definite():
    H = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(NotPositiveDefinite):
        inverse_cholesky_upper(H, 0.01)
    U = inverse_cholesky_upper(torch.eye(2) * 2, 0.5)
    torch.testing.assert_close(U.T @ U, torch.eye(2) / 3)  # (2 + 0.5 * 2)⁻¹


def test_inverse_cholesky_upper_factors_the_damped_inverse_in_float64():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(400, 96, generator=g)
    H = X.T @ X / 400
    U = inverse_cholesky_upper(H, 0.01)
    assert torch.equal(U, torch.triu(U))
    Hd = H.double() + 0.01 * torch.diagonal(H).mean().double() * torch.eye(96, dtype=torch.float64)
    torch.testing.assert_close((U.T @ U).double(), torch.linalg.inv(Hd), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("order, expect_factors", [({}, 1), ({"desc_act": True}, 1),
                                                   ({"act_group_aware": True}, 2)])
def test_factors_kept_across_settings_give_the_same_result(order, expect_factors):
    g = torch.Generator().manual_seed(6)
    W = torch.randn(24, 128, generator=g)
    H, _ = accumulate_hessian(None, 0, correlated_inputs(1024, 128, seed=7).float())
    factors: dict = {}
    for bits, gs in ((2, 32), (4, 32), (3, 64), (8, 64)):
        fresh = gptq_quantize(W, H, bits, gs, sym=True, **order)
        reused = gptq_quantize(W, H, bits, gs, sym=True, factors=factors, **order)
        assert torch.equal(fresh.weight.q, reused.weight.q) and torch.equal(fresh.weight.scales, reused.weight.scales)
    # one factorization per column order: group-aware ordering differs with the group size
    assert len(factors) == expect_factors
