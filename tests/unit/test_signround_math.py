"""SignRound's arithmetic (quantize/signround/signround_math.py and tune.py) against references
written here: round to nearest at the start, straight-through gradients, the signed step, the
step-size schedule, and a whole tuning run against a plain loop over a one-Linear block."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from functools import partial

from llmquant.quantize.grid import grid_params, quantize_groups, quantize_rtn
from llmquant.quantize.signround.signround_math import (
    Rounding,
    fake_quantize,
    initial_rounding,
    learning_rate,
    quantize,
    sign_step,
)
from llmquant.quantize.signround.tune import Batch, TuneOptions, batch_order, tune_block
from llmquant.quantize.targets import LayerSettings


def weight(out_f=24, in_f=64, seed=0):
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))
    w[3] = w[3].abs()  # an all-positive row: asymmetric zero point at the GPTQ v1 limit
    w[5, :16] = 0.0  # an all-zero group
    return w


@pytest.mark.parametrize("bits,group_size,sym", [(3, 16, True), (3, 16, False), (4, -1, False), (2, 32, True),
                                                 (8, 64, False)])
def test_initial_rounding_is_round_to_nearest_bit_for_bit(bits, group_size, sym):
    w = weight()
    q, scales, zeros = quantize(w, initial_rounding(w, group_size), bits, group_size, sym)
    rq, rs, rz = quantize_rtn(w, bits, group_size, sym)
    assert torch.equal(q, rq) and torch.equal(scales, rs) and torch.equal(zeros, rz)
    # and on the full-range grid (the same as the plain one when asymmetric)
    q, scales, zeros = quantize(w, initial_rounding(w, group_size), bits, group_size, sym, full_range=True)
    rq, rs, rz = quantize_groups(w, bits, group_size, partial(grid_params, bits=bits, sym=sym, full_range=True))
    assert torch.equal(q, rq) and torch.equal(scales, rs) and torch.equal(zeros, rz)


def reference_fake(w, v, alpha, beta, bits, gs, sym, full_range=False):
    """Group by group, in plain Python over groups: the GPTQ v1 grid of [alpha*min, beta*max]; with
    full_range (symmetric), AutoRound's signed form: step ±max(alpha*|min|, beta*max) / 2**(bits-1),
    q + v rounded and clamped to [-2**(bits-1), 2**(bits-1) - 1]."""
    maxq = 2 ** bits - 1
    out = torch.empty_like(w)
    for o in range(w.shape[0]):
        for g in range(w.shape[1] // gs):
            cols = slice(g * gs, (g + 1) * gs)
            x = w[o, cols]
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            if sym and full_range:
                if lo == 0 and hi == 0:
                    lo, hi = -1.0, 1.0
                low, high = -lo * float(alpha[o, g]), hi * float(beta[o, g])
                half = 2 ** (bits - 1)
                step = float(torch.tensor((low if low > high else -high) / half).half().float())
                out[o, cols] = step * torch.clamp(torch.round(x / step + v[o, cols]), -half, half - 1)
                continue
            if sym:
                m = max(-lo, hi) * float(beta[o, g])
                lo, hi = -m, m
            else:
                lo, hi = lo * float(alpha[o, g]), hi * float(beta[o, g])
            if lo == 0 and hi == 0:
                lo, hi = -1.0, 1.0
            scale = (hi - lo) / maxq
            if sym:
                zero = (maxq + 1) / 2
            else:
                zero = round(-lo / scale)
                if zero < 1:
                    scale, zero = hi / (maxq - 1), 1.0
            scale = float(torch.tensor(scale).half().float())
            q = torch.clamp(torch.round(x / scale + v[o, cols]) + zero, 0, maxq)
            out[o, cols] = scale * (q - zero)
    return out


@pytest.mark.parametrize("sym,full_range", [(True, False), (False, False), (True, True)])
def test_fake_quantize_with_learned_tensors_matches_a_group_by_group_reference(sym, full_range):
    w = weight(8, 32)
    g = torch.Generator().manual_seed(1)
    v = torch.rand(w.shape, generator=g) - 0.5
    alpha = 0.5 + 0.5 * torch.rand(8, 2, generator=g)
    beta = 0.5 + 0.5 * torch.rand(8, 2, generator=g)
    got = fake_quantize(w, Rounding(v, alpha, beta), 3, 16, sym, full_range)
    want = reference_fake(w, v, alpha, beta, 3, 16, sym, full_range)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # and the integers quantize() returns de-quantize to it
    q, scales, zeros = quantize(w, Rounding(v, alpha, beta), 3, 16, sym, full_range)
    deq = scales.t().repeat_interleave(16, dim=1) * (q.float() - zeros.t().repeat_interleave(16, dim=1))
    torch.testing.assert_close(deq, got, rtol=0, atol=1e-6)


def test_rounding_gradient_is_straight_through_the_scale():
    """dŴ/dv = the group's scale wherever the integer is inside the grid (0 where clamped)."""
    w = weight(8, 32)
    r = initial_rounding(w, 16)
    r.v.requires_grad_(True)
    fake_quantize(w, r, 3, 16, False).sum().backward()
    _, scales, zeros = quantize(w, initial_rounding(w, 16), 3, 16, False)
    scale_per_weight = scales.t().repeat_interleave(16, dim=1)
    q = quantize(w, initial_rounding(w, 16), 3, 16, False)[0]
    inside = (q > 0) & (q < 7)
    torch.testing.assert_close(r.v.grad[inside], scale_per_weight[inside])
    assert (r.v.grad[(q == 0) | (q == 7)].abs() <= scale_per_weight[(q == 0) | (q == 7)]).all()


def test_range_factor_gradient_is_the_straight_through_derivative():
    """Symmetric 4-bit, one group per row: Ŵ = scale * (q - 8), q = round(W / scale) + 8 with the
    rounding passed straight through, scale = 2 * beta * absmax / 15. So dŴ/dscale = q - 8 - W / scale
    where q is inside the grid, q - 8 where it is clamped, and dΣŴ/dbeta = Σ dŴ/dscale * 2 * absmax / 15."""
    w = weight(8, 16)
    r = initial_rounding(w, 16)
    r.beta.requires_grad_(True)
    fake_quantize(w, r, 4, 16, True).sum().backward()
    q, scales, _ = quantize(w, initial_rounding(w, 16), 4, 16, True)
    q, scale = q.float(), scales.t()  # [8, 16], [8, 1]
    raw = torch.round(w / scale) + 8
    inside = (raw >= 0) & (raw <= 15)
    d_scale = (q - 8) - torch.where(inside, w / scale, torch.zeros_like(w))
    want = (d_scale.sum(dim=1) * 2 * w.abs().amax(dim=1) / 15)
    torch.testing.assert_close(r.beta.grad[:, 0], want, rtol=1e-4, atol=1e-5)


def test_sign_step_moves_by_the_sign_and_stays_in_range():
    r = Rounding(torch.tensor([0.0, 0.49, -0.49, 0.2]), torch.tensor([[1.0, 0.6]]), torch.tensor([[0.3, 1.0]]))
    r.v.grad = torch.tensor([1.0, -2.0, 3.0, 0.0])
    r.alpha.grad = torch.tensor([[-1.0, 5.0]])
    r.beta.grad = torch.tensor([[0.5, -0.5]])
    sign_step(r, 0.1, 0.5)
    torch.testing.assert_close(r.v, torch.tensor([-0.1, 0.5, -0.5, 0.2]))
    torch.testing.assert_close(r.alpha, torch.tensor([[1.0, 0.1]]))
    torch.testing.assert_close(r.beta, torch.tensor([[0.0, 1.0]]))
    assert r.v.grad is None and r.alpha.grad is None


def test_learning_rate_decays_linearly_to_zero():
    assert [learning_rate(0.5, s, 4) for s in range(4)] == [0.5, 0.375, 0.25, 0.125]


def test_batch_order_is_seeded_permutations_of_every_batch():
    order = batch_order(5, 12, seed=3)
    assert len(order) == 12
    assert sorted(order[:5]) == [0, 1, 2, 3, 4] and sorted(order[5:10]) == [0, 1, 2, 3, 4]
    assert order == batch_order(5, 12, seed=3) and order != batch_order(5, 12, seed=4)


class OneLinear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.proj = nn.Linear(w.shape[1], w.shape[0], bias=False)
        self.proj.weight.data.copy_(w)

    def forward(self, x, scale=1.0):
        return torch.tanh(self.proj(x)) * scale


def reference_tuning(w, xs, targets, iters, lr, bits, gs, sym, order):
    """SignRound written out for one Linear: plain tensors, the reference fake-quantizer's maths
    vectorised differently (per group via unfold), best-loss tracking before each update."""
    v = torch.zeros_like(w, requires_grad=True)
    n_groups = w.shape[1] // gs
    alpha = torch.ones(w.shape[0], n_groups, requires_grad=True)
    beta = torch.ones(w.shape[0], n_groups, requires_grad=True)
    best, best_params = float("inf"), None
    for step, b in enumerate(order):
        fq = fake_quantize(w, Rounding(v, alpha, beta), bits, gs, sym)
        loss = F.mse_loss(torch.tanh(xs[b] @ fq.t()) * 2.0, targets[b])
        loss.backward()
        if loss.item() < best:
            best, best_params = loss.item(), [t.detach().clone() for t in (v, alpha, beta)]
        step_lr = lr * (1 - step / iters)
        with torch.no_grad():
            for t in (v, alpha, beta):
                t -= step_lr * t.grad.sign()
                t.grad = None
            v.clamp_(-0.5, 0.5)
            alpha.clamp_(0, 1)
            beta.clamp_(0, 1)
    return best, best_params


def correlated_batches(n=3, seed=2):
    """Inputs with correlated channels (singular values 1 .. 0.01): with isotropic inputs rounding to
    nearest is already the best a Linear can do, and no method can improve on it."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(32, 32, generator=g) * torch.logspace(0, -2, 32).unsqueeze(1)
    return [0.3 * torch.randn(8, 32, 32, generator=g) @ mix for _ in range(n)]


@pytest.mark.parametrize("iters", [12, 60])
def test_tune_block_matches_a_plain_loop_and_lowers_the_output_error(iters):
    w = weight(16, 32)
    xs = correlated_batches()
    block = OneLinear(w)
    with torch.no_grad():
        targets = [block(x, scale=2.0) for x in xs]
    s = {"proj": LayerSettings(3, 16, False)}
    opts = TuneOptions(iters=iters, lr=1 / iters, factor_lr=1 / iters, seed=0)
    res = tune_block(block, s, lambda b: Batch(xs[b], (), {"scale": 2.0}, targets[b]), 3, opts)
    best, params = reference_tuning(w, xs, targets, iters, 1 / iters, 3, 16, False, batch_order(3, iters, 0))
    assert res.best_loss == pytest.approx(best, rel=1e-6)
    for got, want in zip(res.rounding["proj"].tensors(), params):
        torch.testing.assert_close(got, want)
    assert torch.equal(block.proj.weight, w) and block.proj.weight.requires_grad  # the block is left as it was
    if iters == 60:  # the tuned rounding beats round to nearest over all batches (0.73x measured)
        def err(r):
            fq = fake_quantize(w, r, 3, 16, False)
            return sum(F.mse_loss(torch.tanh(x @ fq.t()) * 2.0, t).item() for x, t in zip(xs, targets))
        assert err(res.rounding["proj"]) < 0.85 * err(initial_rounding(w, 16))


def test_zero_iterations_leave_round_to_nearest():
    w = weight(16, 32)
    res = tune_block(OneLinear(w), {"proj": LayerSettings(4, 16, True)}, lambda b: None, 3,
                     TuneOptions(iters=0, lr=0.1, factor_lr=0.1))
    assert res.best_loss is None and res.losses == []
    q = quantize(w, res.rounding["proj"], 4, 16, True)[0]
    assert torch.equal(q, quantize_rtn(w, 4, 16, True)[0])
