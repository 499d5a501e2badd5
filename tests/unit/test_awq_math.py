"""AWQ math against references computed independently in the tests: the grid (a per-group float64
loop of AutoAWQ's formulas), the Gram-matrix loss (explicit token sums), the scale search on a
layer with planted outlier channels (brute force over the same ratios with the test's own
quantizer) and the clip search (brute force per group)."""

import pytest
import torch

from llmquant.formats.intweight import IntWeight
from llmquant.quantize.awq import awq_math as am
from llmquant.quantize.grid import group_index
from llmquant.quantize.metrics import output_error


def ref_quant(w: torch.Tensor, bits: int, gs: int, zero_point: bool) -> torch.Tensor:
    """AutoAWQ's pseudo-quantizer, per group in float64, with the scale rounded to fp16 first."""
    out = torch.empty_like(w, dtype=torch.float64)
    maxq = 2**bits - 1
    for r in range(w.shape[0]):
        for g0 in range(0, w.shape[1], gs):
            x = w[r, g0:g0 + gs].double()
            if zero_point:
                scale = max(float(x.max() - x.min()), 1e-5) / maxq
                scale = float(torch.tensor(scale, dtype=torch.float32).half())
                zero = min(max(-round(float(x.min()) / scale), 0), maxq)
            else:
                scale = max(float(x.abs().max()), 1e-5) / (2 ** (bits - 1) - 1)
                scale = float(torch.tensor(scale, dtype=torch.float32).half())
                zero = 2 ** (bits - 1)
            q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
            out[r, g0:g0 + gs] = (q - zero) * scale
    return out


@pytest.mark.parametrize("zero_point", [True, False])
def test_grid_matches_autoawq_formula(zero_point):
    torch.manual_seed(0)
    w = torch.randn(12, 64)
    w[2, :32] = w[2, :32].abs() + 0.5  # a group that does not contain 0: AWQ's range need not either
    w[5, 32:] = 0.0  # a dead group
    got = am.fake_quantize(w, 4, 32, zero_point)
    torch.testing.assert_close(got.double(), ref_quant(w, 4, 32, zero_point), rtol=0, atol=1e-6)
    q, s, z = am.awq_quantize(w, 4, 32, zero_point)
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15
    assert s.shape == (2, 12) and torch.equal(s, s.half().float())
    assert not zero_point or float(z[0, 2]) == 0.0  # the positive group: zero 0, kept as is (no -1 offset)
    layer = IntWeight(q, s, z, group_index(64, 32), 4)
    assert torch.equal(layer.dequantize(), got)  # the search scores exactly what the checkpoint holds


def test_statistics_and_gram_loss_equal_token_sums():
    torch.manual_seed(1)
    x = torch.randn(3, 50, 32)
    st = am.InputStats()
    st.add(x[:2])
    st.add(x[2:])
    flat = x.reshape(-1, 32)
    torch.testing.assert_close(st.mean_abs(), flat.abs().mean(0))
    torch.testing.assert_close(st.H, flat.t() @ flat, rtol=1e-5, atol=1e-4)
    ws = [torch.randn(16, 32), torch.randn(8, 32)]
    s = torch.rand(32) + 0.5
    quant = lambda w: am.fake_quantize(w, 4, 16, True)  # noqa: E731
    expected = sum(float(((flat @ (quant(w * s) / s).t() - flat @ w.t()) ** 2).sum()) for w in ws)
    assert am.gram_loss(ws, st.H, s, [quant, quant]) == pytest.approx(expected, rel=1e-4)


def test_weight_abs_mean_and_candidates():
    w = torch.tensor([[1.0, -2.0, 0.5, 4.0], [2.0, 2.0, -1.0, 1.0]])
    # groups of 2: |w| / group max, then the mean over rows per column
    expected = torch.tensor([(0.5 + 1.0) / 2, (1.0 + 1.0) / 2, (0.125 + 1.0) / 2, (1.0 + 1.0) / 2])
    torch.testing.assert_close(am.weight_abs_mean([w], 2), expected, rtol=1e-5, atol=1e-5)
    x_mean = torch.tensor([0.1, 1.0, 10.0, 1.0])
    plain = am.scale_candidates(x_mean, None, 4, duo=False)
    assert [r for r, _ in plain] == [0.0, 0.25, 0.5, 0.75] and torch.equal(plain[0][1], torch.ones(4))
    s = x_mean**0.5
    torch.testing.assert_close(plain[2][1], s / (s.max() * s.min()).sqrt())
    duo = am.scale_candidates(x_mean, expected, 4, duo=True)
    assert len(duo) == 5 and duo[-1][0] is None and torch.equal(duo[-1][1], torch.ones(4))


def planted_layer(seed=0):
    """A Linear whose inputs have a few channels 30x larger than the rest, as in LLM activations."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 64, generator=g) * 0.5
    outliers = torch.tensor([3, 17, 40, 41])
    x[:, outliers] *= 30.0
    w = torch.randn(48, 64, generator=g) * 0.05
    return x, w, outliers


def test_scale_search_picks_the_best_ratio_on_planted_outliers():
    x, w, outliers = planted_layer()
    n_grid = 20
    # the test's own answer: for every ratio of the AWQ grid, the output MSE of Q(W s)/s over all tokens
    x_mean = x.abs().mean(0)
    losses = []
    for i in range(n_grid):
        s = x_mean.double() ** (i / n_grid)
        s = (s / (s.max() * s.min()).sqrt()).float()
        w_eff = (ref_quant(w * s, 4, 32, True) / s.double()).float()
        losses.append(float(((x @ w_eff.t() - x @ w.t()) ** 2).mean()))
    best = min(range(n_grid), key=losses.__getitem__)
    assert best > 0 and losses[best] < 0.8 * losses[0]  # the planted outliers make scaling pay off

    st = am.InputStats()
    st.add(x)
    quant = lambda m: am.fake_quantize(m, 4, 32, True)  # noqa: E731
    cands = am.scale_candidates(st.mean_abs(), None, n_grid, duo=False)
    result = am.search_scales(cands, lambda s: am.gram_loss([w], st.H, s, [quant]) / (x.shape[0] * w.shape[0]))
    assert result.index == best and result.ratio == best / n_grid
    assert result.unscaled_index == 0 and result.loss_unscaled == pytest.approx(losses[0], rel=1e-3)
    for mine, theirs in zip(result.losses, losses):
        assert mine == pytest.approx(theirs, rel=1e-3)
    s = result.scales
    assert float(s[outliers].min()) > float(s[~torch.isin(torch.arange(64), outliers)].max())  # outliers scaled up


def test_search_ignores_non_finite_losses_and_keeps_the_first_minimum():
    cands = [(0.0, torch.ones(2)), (0.5, torch.full((2,), 2.0)), (0.75, torch.full((2,), 3.0))]
    values = iter([float("nan"), 1.0, 1.0])
    r = am.search_scales(cands, lambda s: next(values))
    assert r.index == 1 and r.ratio == 0.5
    with pytest.raises(ValueError, match="non-finite"):
        am.search_scales(cands[:1], lambda s: float("inf"))


def ratio_candidates(n, extra=True):
    """Candidates whose s encodes the ratio index (s = 2 + i); the extra one is s = 1."""
    cands = [(i / n, torch.full((2,), 2.0 + i)) for i in range(n)]
    return cands + ([(None, torch.ones(2))] if extra else [])


def index_of(s):
    return None if bool((s == 1).all()) else int(s[0]) - 2


@pytest.mark.parametrize("minimum", [0, 3, 7, 8, 13, 19])
def test_coarse_to_fine_finds_a_single_minimum_scoring_at_most_12_of_21(minimum):
    cands = ratio_candidates(20)
    scored = []

    def loss(s):  # one minimum at ratio index `minimum`; s = 1 is worse than every ratio
        i = index_of(s)
        scored.append(i)
        return 100.0 if i is None else (i - minimum) ** 2 + 1.0

    r = am.search_scales(cands, loss, coarse_points=5)
    full = am.search_scales(cands, loss)
    assert r.index == full.index == minimum and r.ratio == minimum / 20
    n_coarse = len(scored) - 21
    assert n_coarse <= 12 and len(set(scored[:n_coarse])) == n_coarse  # nothing scored twice
    assert sum(x == x for x in r.losses) == n_coarse  # the rest stay NaN
    assert None in scored[:n_coarse] and r.loss_unscaled == 100.0  # s = 1 always scored


def test_coarse_to_fine_scores_the_coarse_ratios_then_the_neighbours_of_the_best():
    cands = ratio_candidates(20, extra=False)
    order = []
    values = {i: 5.0 for i in range(20)} | {16: 2.0, 17: 0.5}

    def loss(s):
        order.append(index_of(s))
        return values[index_of(s)]

    r = am.search_scales(cands, loss, coarse_points=5)
    assert order[:5] == [0, 4, 8, 12, 16]
    assert sorted(order[5:]) == [13, 14, 15, 17, 18, 19]
    assert r.index == 17
    # two minima: coarse to fine keeps the one near the best coarse point (a documented limit)
    values = {i: 5.0 for i in range(20)} | {2: 0.1, 8: 1.0, 9: 0.5}
    order.clear()
    r = am.search_scales(cands, loss, coarse_points=5)
    assert r.index == 9 and 2 not in order
    assert am.search_scales(cands, loss).index == 2  # the full grid finds it


def brute_force_clip(w, x, bits, gs, n_grid, max_shrink):
    """Per (row, group): try every bound, score it on the tokens, keep the first best."""
    out = torch.empty(w.shape[0], w.shape[1] // gs)
    for r in range(w.shape[0]):
        for g in range(w.shape[1] // gs):
            wg, xg = w[r, g * gs:(g + 1) * gs], x[:, g * gs:(g + 1) * gs]
            org = float(wg.abs().max())
            errs = []
            for i in range(int(max_shrink * n_grid)):
                mv = org * (1 - i / n_grid)
                q = ref_quant(wg.clamp(-mv, mv).view(1, -1), bits, gs, True).float().view(-1)
                errs.append((float(((xg @ (q - wg)) ** 2).sum()), mv))
            out[r, g] = min(errs, key=lambda e: e[0])[1]
    return out


def test_clip_search_matches_brute_force_and_never_increases_the_error():
    x, w, _ = planted_layer(seed=3)
    w = w[:12]
    w[0, 5] = 0.6  # a weight outlier: clipping it helps its group
    H = x.t() @ x
    mv = am.clip_search(w, H, 4, 32, True, n_grid=20, max_shrink=0.5, rows_per_chunk=5)
    torch.testing.assert_close(mv, brute_force_clip(w, x, 4, 32, 20, 0.5), rtol=1e-6, atol=1e-7)
    clipped = am.fake_quantize(am.apply_clip(w, mv), 4, 32, True)
    plain = am.fake_quantize(w, 4, 32, True)
    for g in range(2):  # each group's own error (the objective) never grows
        sl = slice(32 * g, 32 * (g + 1))
        e_clip = ((x[:, sl] @ (clipped - w)[:, sl].t()) ** 2).sum(0)
        e_plain = ((x[:, sl] @ (plain - w)[:, sl].t()) ** 2).sum(0)
        assert bool((e_clip <= e_plain * (1 + 1e-5)).all())
    assert float(mv[0, 0]) < float(w[0, :32].abs().max())  # the outlier's group was clipped
    assert output_error(w, clipped, H) < output_error(w, plain, H)
