"""AWQ math as pure tensor functions: the AWQ integer grid (its scale and zero point are
grid.awq_grid_params), activation statistics, the scale grid search and the clipping search.

Conventions (AutoAWQ's, which vLLM's awq / awq_marlin kernels and our loader read):
  w ≈ scale * (q - zero), q in [0, 2**bits - 1], groups of `group_size` input columns.
  zero_point (asymmetric): scale = (max - min) / (2**bits - 1) (range at least 1e-5),
      zero = clamp(-round(min / scale), 0, 2**bits - 1); the range does not have to contain 0,
      and zeros are stored as they are (no "zero - 1" as in GPTQ v1).
  symmetric: scale = absmax / (2**(bits-1) - 1), zero = 2**(bits-1).
Scales are rounded to fp16 before q is computed (the checkpoint stores fp16 scales), so the
search scores exactly the weights that will be written. Source of the conventions, read and not
copied: AutoAWQ `awq/quantize/quantizer.py` (`pseudo_quantize_tensor`, `_compute_best_scale`,
`_compute_best_clip`), mit-han-lab/llm-awq `awq/quantize/auto_scale.py` / `auto_clip.py`.

The scale search (AWQ paper, section 3.2): for ratio r in {0, 1/n, ..., (n-1)/n},
  s = mean|x|^r                                  (duo_scaling off)
  s = mean|x|^r / (mean_w^(1-r) + 1e-4)          (duo_scaling on; mean_w: mean over the
                                                  output rows of |w| / max|w| of its group)
normalised by sqrt(max(s) * min(s)), and the s whose Q(W·s)/s gives the smallest output MSE
wins. Here the candidates also include s = 1 (no scaling) when duo_scaling is on (the plain grid
has it at r = 0), so a mapping never ends worse on its calibration loss than no scaling.

For a loss on the Linears' own outputs the MSE over tokens is exactly
  sum over rows of (Ŵ - W) H (Ŵ - W)^T / n_tokens,   H = X^T X,
so the search and the clip search run on the d×d Gram matrix instead of the n×d activations:
the same numbers, for every calibration token, at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from ..grid import awq_grid_params, effective_group, fake_quantize_groups, grouped_rows, quantize_groups


def awq_quantize(w: Tensor, bits: int, group_size: int, zero_point: bool) -> tuple[Tensor, Tensor, Tensor]:
    """[out, in] weight -> q [out, in] int32, scales [n_groups, out], zeros [n_groups, out]."""
    return quantize_groups(w, bits, group_size, partial(awq_grid_params, bits=bits, zero_point=zero_point))


def fake_quantize(w: Tensor, bits: int, group_size: int, zero_point: bool) -> Tensor:
    """The de-quantized weight the checkpoint will hold (same numbers as IntWeight.dequantize)."""
    return fake_quantize_groups(w, bits, group_size, partial(awq_grid_params, bits=bits, zero_point=zero_point))


Quantizer = Callable[[Tensor], Tensor]


# -- statistics --------------------------------------------------------------------------------


@dataclass
class InputStats:
    """Running statistics of a Linear group's input: per-channel sum of |x|, token count, and
    the Gram matrix H = X^T X (float32; the matmul may run in `dtype` with float32 accumulation)."""

    abs_sum: Tensor | None = None
    count: int = 0
    H: Tensor | None = None
    dtype: torch.dtype = torch.float32
    gram: bool = True

    def add(self, x: Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        s = flat.abs().sum(dim=0, dtype=torch.float32).double()
        self.abs_sum = s if self.abs_sum is None else self.abs_sum + s
        self.count += flat.shape[0]
        if self.gram:
            xs = flat.to(self.dtype)
            h = (xs.t() @ xs).float()
            self.H = h if self.H is None else self.H.add_(h)

    def mean_abs(self) -> Tensor:
        return (self.abs_sum / max(1, self.count)).float()


def weight_abs_mean(weights: list[Tensor], group_size: int) -> Tensor:
    """Per input channel: the mean over all output rows of |w| / max|w| of its group."""
    w = torch.cat([x.float() for x in weights], dim=0)
    wg, _, _ = grouped_rows(w, group_size)
    wg = wg.abs() / (wg.abs().amax(dim=1, keepdim=True) + 1e-6)
    return wg.reshape(w.shape).mean(dim=0)


# -- the scale search --------------------------------------------------------------------------


def scale_candidates(x_mean: Tensor, w_mean: Tensor | None, n_grid: int, duo: bool) -> list[tuple[float | None, Tensor]]:
    """[(ratio, s)]: the AWQ grid, plus (None, ones) for "no scaling" when duo scaling is on."""
    out: list[tuple[float | None, Tensor]] = []
    x_mean = x_mean.float()
    for i in range(n_grid):
        r = i / n_grid
        if duo:
            s = (x_mean.pow(r) / (w_mean.float().pow(1 - r) + 1e-4)).clamp(min=1e-4)
        else:
            s = x_mean.pow(r).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        out.append((r, s))
    if duo:
        out.append((None, torch.ones_like(x_mean)))
    return out


@dataclass
class ScaleSearch:
    index: int
    ratio: float | None  # None: the extra "no scaling" candidate won
    scales: Tensor
    losses: list[float] = field(default_factory=list)
    unscaled_index: int | None = None  # the candidate with s = 1, if any

    @property
    def loss(self) -> float:
        return self.losses[self.index]

    @property
    def loss_unscaled(self) -> float | None:
        return None if self.unscaled_index is None else self.losses[self.unscaled_index]


def search_scales(candidates: list[tuple[float | None, Tensor]], loss_fn: Callable[[Tensor], float],
                  coarse_points: int | None = None) -> ScaleSearch:
    """Score the candidates; the first smallest finite loss wins.

    coarse_points None: every candidate is scored (AWQ's grid search). coarse_points k: coarse to
    fine, for a loss that changes smoothly with the ratio: k evenly spaced ratios (step
    n // k) and the extra candidates (s = 1) first, then every ratio closer than one step to
    the best coarse ratio; the candidates never scored have a NaN loss. For n_grid 20 and k 5:
    at most 12 of 21 scored, and the same winner as the full grid whenever the loss has one
    minimum between the coarse points around it."""
    ratios = [i for i, (r, _) in enumerate(candidates) if r is not None]
    losses = [float("nan")] * len(candidates)

    def score(i: int) -> None:
        if losses[i] != losses[i]:
            losses[i] = float(loss_fn(candidates[i][1]))

    if coarse_points is None or len(ratios) <= coarse_points:
        for i in range(len(candidates)):
            score(i)
    else:
        step = len(ratios) // coarse_points
        coarse = ratios[::step]
        for i in coarse + [i for i in range(len(candidates)) if i not in ratios]:
            score(i)
        best_coarse = min(coarse, key=lambda i: (not _finite(losses[i]), losses[i] if _finite(losses[i]) else 0.0))
        pos = ratios.index(best_coarse)
        for j in range(max(0, pos - step + 1), min(len(ratios), pos + step)):
            score(ratios[j])
    best = -1
    for i, loss in enumerate(losses):
        if _finite(loss) and (best < 0 or loss < losses[best]):
            best = i
    if best < 0:
        raise ValueError("every scale candidate gave a non-finite loss")
    unscaled = next((i for i, (_, s) in enumerate(candidates) if bool((s == 1).all())), None)
    return ScaleSearch(best, candidates[best][0], candidates[best][1], losses, unscaled)


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def scaled_fake_quantize(w: Tensor, s: Tensor, quant: Quantizer) -> Tensor:
    """Q(W·diag(s))·diag(1/s): the effective weight of a scaled, quantized Linear."""
    return quant(w.float() * s) / s


def gram_loss(weights: list[Tensor], H: Tensor, s: Tensor, quants: list[Quantizer]) -> float:
    """Sum over the Linears of trace((Ŵ - W) H (Ŵ - W)^T): their output squared error."""
    total = 0.0
    for w, quant in zip(weights, quants):
        d = scaled_fake_quantize(w, s, quant) - w.float()
        total += float(((d @ H) * d).sum())
    return total


# -- clipping ----------------------------------------------------------------------------------


def group_blocks(H: Tensor, group_size: int) -> Tensor:
    """The diagonal [group, group] blocks of H: [n_groups, group, group]."""
    d = H.shape[0]
    gs = effective_group(d, group_size)
    g = d // gs
    return H.reshape(g, gs, g, gs).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def group_errors(d: Tensor, blocks: Tensor) -> Tensor:
    """Per (row, group) error delta_g^T H_g delta_g of a weight difference d [rows, n_groups, group]."""
    dp = d.permute(1, 0, 2)  # [G, rows, gs]
    return (torch.bmm(dp, blocks) * dp).sum(dim=-1).t()  # [rows, G]


def clip_search(w: Tensor, H: Tensor, bits: int, group_size: int, zero_point: bool, n_grid: int = 20,
                max_shrink: float = 0.5, rows_per_chunk: int = 1024) -> Tensor:
    """The clipping bound per (output row, group) that minimises that group's share of the output
    error, sum over tokens of (x_g · (Q(clip(w_g)) - w_g))^2, over bounds max|w_g| * (1 - i/n_grid),
    i < max_shrink * n_grid. i = 0 (no clipping) is a candidate, so no group's error grows.
    Returns max_val [out, n_groups]."""
    out_f, in_f = w.shape
    gs = effective_group(in_f, group_size)
    blocks = group_blocks(H.float(), gs)
    w3 = w.float().reshape(out_f, in_f // gs, gs)
    best_all = []
    for r0 in range(0, out_f, rows_per_chunk):
        wc = w3[r0:r0 + rows_per_chunk]
        org = wc.abs().amax(dim=-1, keepdim=True)  # [rows, G, 1]
        best = org.clone()
        best_err = torch.full(org.shape[:2], float("inf"))
        for i in range(max(1, int(max_shrink * n_grid))):
            mv = org * (1 - i / n_grid)
            cand = torch.clamp(wc, -mv, mv)
            q = fake_quantize(cand.reshape(-1, in_f), bits, gs, zero_point).reshape(wc.shape)
            err = group_errors(q - wc, blocks)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better.unsqueeze(-1), mv, best)
        best_all.append(best.squeeze(-1))
    return torch.cat(best_all, dim=0)


def apply_clip(w: Tensor, max_val: Tensor) -> Tensor:
    """Clamp each (row, group) of w [out, in] to [-max_val, max_val] (max_val [out, n_groups])."""
    out_f, in_f = w.shape
    mv = max_val.to(w.dtype).unsqueeze(-1)
    return torch.clamp(w.reshape(out_f, mv.shape[1], -1), -mv, mv).reshape(out_f, in_f)
