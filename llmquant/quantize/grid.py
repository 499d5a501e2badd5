"""Integer grids for weight-only quantization: pure tensor-in, tensor-out functions.

Conventions (those of the GPTQ reference and the GPTQ v1 checkpoint format):
  w ≈ scale * (q - zero),  q in [0, 2**bits - 1]
Weights are [out_features, in_features]; groups run along the input dimension, and the
per-group parameters are laid out [n_groups, out_features] as the checkpoint stores them.
Scales are rounded to fp16 before q is computed, because fp16 is what the checkpoint keeps:
the integers are chosen for the scale that will actually be used.

Two conventions choose a group's scale and zero point, the rest is shared:
  grid_params      GPTQ reference / GPTQ v1: the range contains 0, asymmetric zeros >= 1;
                   `full_range`: symmetric grids use all 2**bits levels (AutoRound's int_sym,
                   llama.cpp's Q4_0 style): the side of larger magnitude is the grid's end,
                   -2**(bits-1) steps from the zero, and the scale carries the sign.
  awq_grid_params  AutoAWQ (AWQ GEMM): min..max, zeros stored as they are; symmetric uses absmax.
quantize_groups / fake_quantize_groups take either one (as a function of the grouped rows).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor

FP16_TINY = torch.finfo(torch.float16).tiny

# grouped rows [rows, group] -> (scale, zero) [rows]
GridParams = Callable[[Tensor], tuple[Tensor, Tensor]]


def max_q(bits: int) -> int:
    return (1 << bits) - 1


def grid_params(w: Tensor, bits: int, sym: bool, full_range: bool = False) -> tuple[Tensor, Tensor]:
    """Scale and zero point for each row of `w` (rows share one grid), GPTQ-reference style.

    The range always contains 0. Asymmetric zeros are kept >= 1 because GPTQ v1 stores
    zero - 1 in `bits` bits: a zero of 0 cannot be written (GPTQModel's "v2" exists for it).
    `full_range` (symmetric only; asymmetric grids span min..max already): see _full_range_grid.
    Returns (scale, zero) as float32 tensors of shape [rows].
    """
    xmin, xmax = _grid_range(w.float(), sym and not full_range)
    return _grid_maker(bits, sym, full_range)(xmin, xmax)


def _grid_maker(bits: int, sym: bool, full_range: bool) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    if sym and full_range:
        return lambda xmin, xmax: _full_range_grid(xmin, xmax, bits)
    return lambda xmin, xmax: _range_grid(xmin, xmax, bits, sym)


def _full_range_grid(xmin: Tensor, xmax: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(scale, zero) of the full-range symmetric grid for the (uncentred) range [xmin, xmax]: zero
    2**(bits-1), scale ±max(-xmin, xmax) / 2**(bits-1), negative when xmax is the larger side, so
    that side maps to q = 0 exactly and the other reaches (2**(bits-1) - 1) steps: 8 levels at 3
    bits over absmax/4 steps, where _range_grid's symmetric grid has a 2·absmax/7 step."""
    half = 1 << (bits - 1)
    scale = torch.where(-xmin > xmax, -xmin, -xmax) / half
    zero = torch.full_like(scale, float(half))
    scale = scale.half().float()
    scale = torch.where(scale == 0, torch.full_like(scale, FP16_TINY), scale)
    return scale, zero


def _grid_range(w: Tensor, sym: bool) -> tuple[Tensor, Tensor]:
    """Each row's (xmin, xmax), GPTQ-reference style: containing 0, centred when symmetric, and
    (-1, 1) for an all-zero row."""
    zeros_ = torch.zeros(w.shape[0], device=w.device)
    xmin = torch.minimum(w.min(dim=1).values, zeros_)
    xmax = torch.maximum(w.max(dim=1).values, zeros_)
    if sym:
        # The reference keeps xmin = 0 for all-positive rows, which clips them at 7/15 of
        # their max under the fixed zero of a symmetric grid; centring always avoids that.
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    dead = (xmin == 0) & (xmax == 0)
    xmin = torch.where(dead, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(dead, torch.full_like(xmax, 1.0), xmax)
    return xmin, xmax


def _range_grid(xmin: Tensor, xmax: Tensor, bits: int, sym: bool) -> tuple[Tensor, Tensor]:
    """(scale, zero) of the grid spanning [xmin, xmax] (which contains 0), as GPTQ v1 stores it."""
    maxq = max_q(bits)
    if sym:
        scale = (xmax - xmin) / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        scale = (xmax - xmin) / maxq
        zero = torch.round(-xmin / scale)
        # v1 cannot store zero 0: widen the step so the grid [-scale, (maxq-1)*scale] covers xmax.
        low = zero < 1
        scale = torch.where(low, xmax / (maxq - 1), scale)
        zero = torch.where(low, torch.ones_like(zero), zero)
    scale = scale.half().float()
    scale = torch.where(scale == 0, torch.full_like(scale, FP16_TINY), scale)
    return scale, zero


# The GPTQ reference's MSE grid search (its Quantizer with mse=True): shrink factors 1, 0.99, ..., 0.21
MSE_NORM, MSE_STEPS, MSE_MAX_SHRINK = 2.4, 100, 0.8


def mse_grid_params(w: Tensor, bits: int, sym: bool, full_range: bool = False) -> tuple[Tensor, Tensor]:
    """grid_params' grid shrunk towards 0 by the factor (1, 0.99, ..., 0.21) that minimises each
    row's Σ|w - ŵ|^2.4 (the GPTQ reference's `mse` option): clipping a few outliers buys a finer
    step for the rest. The unshrunk grid is the first candidate, so the error never grows."""
    w = w.float()
    xmin, xmax = _grid_range(w, sym and not full_range)
    make = _grid_maker(bits, sym, full_range)
    best_s, best_z = make(xmin, xmax)
    best = _grid_error(w, best_s, best_z, bits)
    for i in range(1, int(MSE_MAX_SHRINK * MSE_STEPS)):
        p = 1 - i / MSE_STEPS
        s, z = make(p * xmin, p * xmax)
        err = _grid_error(w, s, z, bits)
        better = err < best
        best = torch.where(better, err, best)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def _grid_error(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    return (fake_quantize(w, scale, zero, bits) - w).abs_().pow_(MSE_NORM).sum(dim=1)


# how a GPTQ group's grid is chosen (the recipe's `grid`)
GRIDS: dict[str, Callable[[Tensor, int, bool], tuple[Tensor, Tensor]]] = {
    "minmax": grid_params,
    "mse": mse_grid_params,
    "fullrange": partial(grid_params, full_range=True),
    "fullrange_mse": partial(mse_grid_params, full_range=True),
}


def awq_grid_params(wg: Tensor, bits: int, zero_point: bool) -> tuple[Tensor, Tensor]:
    """Scale (fp16-exact, float32) and zero point for each row of `wg` [rows, group], AutoAWQ style.

    zero_point: scale = (max - min) / (2**bits - 1) (range at least 1e-5), zero = clamp(-round(min /
    scale), 0, 2**bits - 1); the range does not have to contain 0. Symmetric: scale = absmax /
    (2**(bits-1) - 1), zero = 2**(bits-1)."""
    wg = wg.float()
    if zero_point:
        hi, lo = wg.amax(dim=1), wg.amin(dim=1)
        scale = (hi - lo).clamp(min=1e-5) / max_q(bits)
    else:
        scale = wg.abs().amax(dim=1).clamp(min=1e-5) / (2 ** (bits - 1) - 1)
    scale = scale.half().float()
    scale = torch.where(scale == 0, torch.full_like(scale, FP16_TINY), scale)
    if zero_point:
        zero = (-torch.round(lo / scale)).clamp(0, max_q(bits))
    else:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    return scale, zero


def quantize_to_grid(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """Integers q (int32) for `w` on the grid of per-row `scale`/`zero` (broadcast over columns)."""
    q = torch.round(w.float() / scale.unsqueeze(-1)) + zero.unsqueeze(-1)
    return q.clamp_(0, max_q(bits)).to(torch.int32)


def dequantize_grid(q: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    return scale.unsqueeze(-1) * (q.float() - zero.unsqueeze(-1))


def fake_quantize(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    return dequantize_grid(quantize_to_grid(w, scale, zero, bits), scale, zero)


def effective_group(in_features: int, group_size: int) -> int:
    """The group size in columns: group_size -1 means one group of the whole row."""
    return in_features if group_size == -1 else group_size


def group_index(in_features: int, group_size: int) -> Tensor:
    """g_idx without act-order: column i belongs to group i // group_size."""
    return torch.arange(in_features, dtype=torch.int32) // effective_group(in_features, group_size)


def grouped_rows(w: Tensor, group_size: int) -> tuple[Tensor, int, int]:
    """A [out, in] weight as float32 rows of one group each, [out * n_groups, group] (row o * n_groups
    + g is group g of output row o), with out and n_groups."""
    out_f, in_f = w.shape
    gs = effective_group(in_f, group_size)
    if in_f % gs:
        raise ValueError(f"group size {gs} does not divide in_features {in_f}")
    return w.float().reshape(out_f * (in_f // gs), gs), out_f, in_f // gs


def quantize_groups(w: Tensor, bits: int, group_size: int, params: GridParams) -> tuple[Tensor, Tensor, Tensor]:
    """A [out, in] weight on the grid `params` chooses for each group of `group_size` input columns.

    Returns q [out, in] int32, scales [n_groups, out] float32 (fp16-exact), zeros [n_groups, out]."""
    wg, out_f, n_groups = grouped_rows(w, group_size)
    scale, zero = params(wg)
    q = quantize_to_grid(wg, scale, zero, bits).reshape(out_f, -1)
    return q, scale.reshape(out_f, n_groups).t().contiguous(), zero.reshape(out_f, n_groups).t().contiguous()


def fake_quantize_groups(w: Tensor, bits: int, group_size: int, params: GridParams) -> Tensor:
    """The de-quantized weight of quantize_groups (same numbers as IntWeight.dequantize), float32."""
    wg, _, _ = grouped_rows(w, group_size)
    scale, zero = params(wg)
    return fake_quantize(wg, scale, zero, bits).reshape(w.shape)


def quantize_rtn(w: Tensor, bits: int, group_size: int, sym: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest of a [out, in] weight with groups along `in`, on the GPTQ v1 grid.

    Returns q [out, in] int32, scales [n_groups, out] float32 (fp16-exact), zeros [n_groups, out].
    """
    return quantize_groups(w, bits, group_size, partial(grid_params, bits=bits, sym=sym))


def dequantize_groups(q: Tensor, scales: Tensor, zeros: Tensor, g_idx: Tensor) -> Tensor:
    """[out, in] weights from integers and per-group [n_groups, out] parameters, any g_idx."""
    g = g_idx.long()
    s = scales.float()[g].t()  # [out, in]
    z = zeros.float()[g].t()
    return s * (q.float() - z)
