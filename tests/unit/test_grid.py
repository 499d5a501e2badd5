import pytest
import torch

from llmquant.quantize.grid import (
    dequantize_groups,
    fake_quantize,
    grid_params,
    group_index,
    mse_grid_params,
    quantize_rtn,
)


def reference_rtn(w: torch.Tensor, bits: int, gs: int, sym: bool):
    """Straightforward per-(row, group) loop in float64."""
    out_f, in_f = w.shape
    maxq = 2**bits - 1
    w_hat = torch.zeros_like(w, dtype=torch.float64)
    for r in range(out_f):
        for g0 in range(0, in_f, gs):
            x = w[r, g0:g0 + gs].double()
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            if sym:
                hi = max(abs(lo), hi)
                lo = -hi
            if lo == hi == 0:
                lo, hi = -1.0, 1.0
            scale = (hi - lo) / maxq
            zero = (maxq + 1) / 2 if sym else round(-lo / scale)
            if not sym and zero < 1:
                scale, zero = hi / (maxq - 1), 1
            scale = float(torch.tensor(scale).half())
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            w_hat[r, g0:g0 + gs] = scale * (q - zero)
    return w_hat


def test_rtn_matches_reference_sym_and_asym():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    w[3, :32] = w[3, :32].abs()  # an all-positive group
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            q, s, z = quantize_rtn(w, bits, 32, sym)
            got = dequantize_groups(q, s, z, group_index(64, 32))
            torch.testing.assert_close(got.double(), reference_rtn(w, bits, 32, sym), rtol=0, atol=1e-6)


def test_grid_properties():
    torch.manual_seed(1)
    w = torch.randn(8, 128)
    q, s, z = quantize_rtn(w, 4, 64, sym=True)
    assert q.dtype == torch.int32 and q.min() >= 0 and q.max() <= 15
    assert s.shape == (2, 8) and torch.all(z == 8)
    assert torch.equal(s, s.half().float())  # fp16-exact: what the checkpoint stores
    q, s, z = quantize_rtn(w, 4, -1, sym=False)
    assert s.shape == (1, 8) and z.min() >= 1  # v1 stores zero-1, so zero >= 1
    err = (dequantize_groups(q, s, z, group_index(128, -1)) - w).abs()
    assert torch.all(err <= s[0].unsqueeze(1) / 2 + 1e-6)


def test_more_bits_less_error():
    torch.manual_seed(2)
    w = torch.randn(32, 64)
    errs = []
    for bits in (2, 3, 4, 8):
        q, s, z = quantize_rtn(w, bits, 32, True)
        errs.append(float((dequantize_groups(q, s, z, group_index(64, 32)) - w).norm()))
    assert errs == sorted(errs, reverse=True)


def test_quantize_groups_takes_either_convention():
    """quantize_rtn is quantize_groups on the GPTQ v1 grid; the AWQ grid lays its output out the
    same way and dequantizes to fake_quantize_groups."""
    from functools import partial

    from llmquant.quantize.grid import awq_grid_params, fake_quantize_groups, grid_params, quantize_groups

    torch.manual_seed(3)
    w = torch.randn(6, 64)
    q, s, z = quantize_groups(w, 4, 16, partial(grid_params, bits=4, sym=False))
    for a, b in zip((q, s, z), quantize_rtn(w, 4, 16, False)):
        assert torch.equal(a, b)
    awq = partial(awq_grid_params, bits=4, zero_point=True)
    q, s, z = quantize_groups(w, 4, 16, awq)
    assert q.shape == (6, 64) and s.shape == z.shape == (4, 6)
    deq = dequantize_groups(q, s, z, group_index(64, 16))
    assert torch.equal(deq, fake_quantize_groups(w, 4, 16, awq))
    # all-positive groups: AWQ's range starts at their minimum (zero 0), GPTQ v1's contains 0 and
    # keeps zeros >= 1
    pos = w.abs() + 0.1
    assert (quantize_groups(pos, 4, 16, awq)[2] == 0).all()
    assert (quantize_rtn(pos, 4, 16, False)[2] >= 1).all()


def reference_mse_grid(w: torch.Tensor, bits: int, sym: bool):
    """The GPTQ reference's MSE search, one row at a time in float64: the min/max grid of the row
    shrunk by p = 1, 0.99, ..., 0.21, keeping the first p with the least Σ|w - ŵ|^2.4."""
    maxq = 2**bits - 1
    scales, zeros = [], []
    for row in w.double():
        best = None
        for i in range(80):
            p = 1 - i / 100
            s, z = grid_params((p * row)[None].float(), bits, sym)
            s, z = float(s), float(z)
            q = torch.clamp(torch.round(row / s) + z, 0, maxq)
            err = float((s * (q - z) - row).abs().pow(2.4).sum())
            if best is None or err < best[0]:
                best = (err, s, z)
        scales.append(best[1])
        zeros.append(best[2])
    return torch.tensor(scales), torch.tensor(zeros)


@pytest.mark.parametrize("bits,sym", [(2, True), (3, True), (3, False), (4, False)])
def test_mse_grid_matches_reference_search_and_never_loses(bits, sym):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(40, 32, generator=g)
    s, z = mse_grid_params(w, bits, sym)
    rs, rz = reference_mse_grid(w, bits, sym)
    torch.testing.assert_close(s, rs.float(), rtol=0, atol=0)
    torch.testing.assert_close(z, rz.float(), rtol=0, atol=0)
    s0, z0 = grid_params(w, bits, sym)
    err = (fake_quantize(w, s, z, bits) - w).abs().pow(2.4).sum(1)
    err0 = (fake_quantize(w, s0, z0, bits) - w).abs().pow(2.4).sum(1)
    assert (err <= err0 * (1 + 1e-6)).all() and err.sum() < 0.95 * err0.sum()
    assert int((s < s0).sum()) > 10  # most Gaussian rows are clipped


def reference_full_range(w: torch.Tensor, bits: int, shrink: float = 1.0) -> torch.Tensor:
    """AutoRound's int_sym written row by row in signed integers: step = the larger of |min| and
    max over 2**(bits-1), negative when max is the larger; q in [-2**(bits-1), 2**(bits-1) - 1]."""
    half = 2 ** (bits - 1)
    out = torch.empty_like(w)
    for r, row in enumerate(w.double()):
        lo, hi = min(float(row.min()), 0.0) * shrink, max(float(row.max()), 0.0) * shrink
        if lo == hi == 0:
            lo, hi = -1.0, 1.0
        step = -lo / half if -lo > hi else -hi / half
        step = float(torch.tensor(step).half())
        out[r] = step * torch.clamp(torch.round(row / step), -half, half - 1)
    return out.float()


def test_full_range_grid_by_hand():
    # 3 bits: the larger side is exactly the grid's end, in steps of absmax / 4
    w = torch.tensor([[-1.0, 0.5, 0.9, 0.2], [-0.5, 1.0, 0.9, -0.9]])
    s, z = grid_params(w, 3, True, full_range=True)
    assert s.tolist() == [0.25, -0.25] and z.tolist() == [4.0, 4.0]
    got = fake_quantize(w, s, z, 3)
    assert got.tolist() == [[-1.0, 0.5, 0.75, 0.25], [-0.5, 1.0, 1.0, -0.75]]
    # GPTQ's symmetric grid of the same rows steps by 2/7
    s0, _ = grid_params(w, 3, True)
    torch.testing.assert_close(s0, torch.tensor([2 / 7, 2 / 7]).half().float())
    # asymmetric grids are not changed by full_range
    a = grid_params(w, 3, False, full_range=True)
    b = grid_params(w, 3, False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_full_range_grid_matches_autorounds_signed_form(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(64, 32, generator=g)
    w[3] = w[3].abs()  # all positive: the scale is negative
    w[4] = -w[4].abs()
    w[5] = 0.0
    s, z = grid_params(w, bits, True, full_range=True)
    torch.testing.assert_close(fake_quantize(w, s, z, bits), reference_full_range(w, bits), rtol=0, atol=1e-6)
    assert float(s[3]) < 0 < float(s[4]) and bool((z == 2 ** (bits - 1)).all())
    # the MSE search on it never loses to its unshrunk grid, and finds the reference's best shrink
    sm, zm = mse_grid_params(w, bits, True, full_range=True)
    err = (fake_quantize(w, sm, zm, bits) - w).abs().pow(2.4).sum(1)
    for r in (0, 3, 4, 7):
        errs = [float((reference_full_range(w[r:r + 1], bits, 1 - i / 100) - w[r]).abs().pow(2.4).sum())
                for i in range(80)]
        assert float(err[r]) == pytest.approx(min(errs), rel=1e-5)
