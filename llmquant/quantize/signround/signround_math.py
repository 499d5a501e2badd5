"""SignRound's arithmetic (Cheng et al. 2023, "Optimize Weight Rounding via Signed Gradient Descent
for the Quantization of LLMs"; the method AutoRound implements), on the GPTQ v1 grid of grid.py.
Pure tensor functions.

For a weight W [out, in] with groups of `group_size` input columns, three tensors are learned:
  v      [out, in]        an offset added before rounding, in [-0.5, 0.5] (0: round to nearest)
  alpha  [out, n_groups]  a factor on the group's minimum, in [0, 1]   (asymmetric grids only)
  beta   [out, n_groups]  a factor on the group's maximum (symmetric: on its absmax), in [0, 1]
The group's grid is grid.py's (`_range_grid`) for the range [alpha * xmin, beta * xmax]:
    q = clamp(round(W / scale + v) + zero, 0, 2**bits - 1),   Ŵ = scale * (q - zero)
or, symmetric with `full_range` (AutoRound's int_sym), grid.py's `_full_range_grid` of that range
(both factors then count: the larger of alpha·|xmin| and beta·xmax ends the grid).
Rounding (of W / scale + v, of the zero point, of the scale to fp16) passes the gradient straight
through, so the block's output error reaches v, alpha and beta. With v = 0 and alpha = beta = 1 the
result is grid.quantize_rtn's, bit for bit (full_range: grid_params(full_range=True)'s round to nearest).

The optimiser is signed gradient descent: p <- p - lr * sign(dL/dp), the step decaying linearly
to 0 over the iterations (with lr = 1/iters, v moves at most 0.5 in all: it can flip a rounding,
not more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..grid import FP16_TINY, _grid_range, effective_group, grouped_rows, max_q

V_LIMIT = 0.5
FACTOR_RANGE = (0.0, 1.0)


@dataclass
class Rounding:
    """The learned tensors of one Linear (see the module docstring)."""

    v: Tensor
    alpha: Tensor
    beta: Tensor

    def tensors(self) -> list[Tensor]:
        return [self.v, self.alpha, self.beta]

    def clone(self) -> "Rounding":
        return Rounding(*(t.detach().clone() for t in self.tensors()))


def initial_rounding(w: Tensor, group_size: int) -> Rounding:
    """Round to nearest on the group's full range: v = 0, alpha = beta = 1."""
    n_groups = w.shape[1] // effective_group(w.shape[1], group_size)
    return Rounding(torch.zeros(w.shape, dtype=torch.float32, device=w.device),
                    torch.ones(w.shape[0], n_groups, device=w.device),
                    torch.ones(w.shape[0], n_groups, device=w.device))


def ste_round(x: Tensor) -> Tensor:
    """round(x) forwards, identity backwards."""
    return x + (torch.round(x) - x).detach()


def _grid(wg: Tensor, alpha: Tensor, beta: Tensor, bits: int, sym: bool,
          full_range: bool = False) -> tuple[Tensor, Tensor]:
    """grid._range_grid (grid._full_range_grid) for the range scaled by (alpha, beta), differentiable
    in alpha and beta."""
    maxq = max_q(bits)
    with torch.no_grad():
        xmin, xmax = _grid_range(wg, sym and not full_range)
    if sym and full_range:
        half = 1 << (bits - 1)
        low, high = -xmin * alpha, xmax * beta
        scale = torch.where((low > high).detach(), low, -high) / half
        zero = torch.full_like(scale, float(half)).detach()
    elif sym:
        xmax = xmax * beta
        xmin = -xmax
        scale = (xmax - xmin) / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2).detach()
    else:
        xmin, xmax = xmin * alpha, xmax * beta
        scale = (xmax - xmin) / maxq
        zero = ste_round(-xmin / scale)
        low = (zero < 1).detach()  # GPTQ v1 cannot store a zero of 0 (see grid._range_grid)
        scale = torch.where(low, xmax / (maxq - 1), scale)
        zero = torch.where(low, torch.ones_like(zero), zero)
    scale = scale + (scale.detach().half().float() - scale.detach())  # the fp16 the checkpoint keeps
    scale = torch.where(scale.detach() == 0, torch.full_like(scale, FP16_TINY), scale)
    return scale, zero


def _parts(w: Tensor, r: Rounding, bits: int, group_size: int, sym: bool,
           full_range: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(q [out*n_groups, group] as floats, scale, zero [out*n_groups]) of W under `r`."""
    wg, _, _ = grouped_rows(w, group_size)
    scale, zero = _grid(wg, r.alpha.reshape(-1), r.beta.reshape(-1), bits, sym, full_range)
    v = r.v.reshape(wg.shape)
    q = torch.clamp(ste_round(wg / scale.unsqueeze(-1) + v) + zero.unsqueeze(-1), 0, max_q(bits))
    return q, scale, zero


def fake_quantize(w: Tensor, r: Rounding, bits: int, group_size: int, sym: bool, full_range: bool = False) -> Tensor:
    """Ŵ [out, in], float32, differentiable in r's tensors (W itself is a constant)."""
    q, scale, zero = _parts(w, r, bits, group_size, sym, full_range)
    return (scale.unsqueeze(-1) * (q - zero.unsqueeze(-1))).reshape(w.shape)


def quantize(w: Tensor, r: Rounding, bits: int, group_size: int, sym: bool,
             full_range: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The integers fake_quantize rounds to: q [out, in] int32, scales and zeros [n_groups, out] (the
    layout of grid.quantize_rtn and the GPTQ v1 checkpoint)."""
    with torch.no_grad():
        q, scale, zero = _parts(w, r, bits, group_size, sym, full_range)
    out_f = w.shape[0]
    return (q.reshape(w.shape).to(torch.int32), scale.reshape(out_f, -1).t().contiguous(),
            zero.reshape(out_f, -1).t().contiguous())


def learning_rate(lr: float, step: int, iters: int) -> float:
    """The step size at `step` (0-based) of `iters`: linear decay from lr to 0."""
    return lr * (1 - step / iters)


def sign_step(r: Rounding, lr: float, factor_lr: float) -> None:
    """One step of signed gradient descent on r's tensors (their .grad), then back into range."""
    with torch.no_grad():
        for t, step in ((r.v, lr), (r.alpha, factor_lr), (r.beta, factor_lr)):
            if t.grad is not None:
                t.sub_(step * torch.sign(t.grad))
                t.grad = None
        r.v.clamp_(-V_LIMIT, V_LIMIT)
        r.alpha.clamp_(*FACTOR_RANGE)
        r.beta.clamp_(*FACTOR_RANGE)
