"""GPTQ as pure tensor-in, tensor-out functions (Frantar et al., 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers").

For one Linear with weight W [out, in] and calibration inputs X [tokens, in], GPTQ minimises
||W X^T - Ŵ X^T||² column by column: each column is rounded to the grid and the rounding error
is spread over the columns not yet quantized, weighted by the inverse Hessian H = 2 X^T X / N.
The names follow the paper and its reference code (IST-DASLab/gptq): `H`, the upper Cholesky
factor `U` of H⁻¹ (the reference's `Hinv`), `Err1` the scaled errors of a block.

Semantics chosen here (all equal to the reference unless noted):
- H is a running average over calibration *samples* (sequences), scaled by 2 as in the paper.
- Dead inputs (zero Hessian diagonal: the input never fires) get diagonal 1 and weight 0.
- Damping adds damp_percent x mean(diag H) to the diagonal; a non-positive-definite result
  raises NotPositiveDefinite and the caller retries with more damping.
- A group's grid (scale, zero) is chosen when its first column is reached, from the weights as
  updated by the error feedback of every earlier column. (The reference reads them from the
  matrix that lags behind inside a block of 128 columns; we round the block to whole groups
  instead, so the blocked loop gives exactly the unblocked algorithm's result.)
- group_size -1: one grid per row, from the weights before any update (as the reference).
- static_groups: every group's grid from the weights before any update (reference option).
- desc_act: columns are processed by decreasing diag(H); with dynamic groups, group g holds the
  permuted columns [g*gs, (g+1)*gs), so the stored g_idx is not monotonic.
- act_group_aware (group-aware reordering, Gafni et al., CVPRW 2025; gptqmodel's default): groups
  keep their own columns (g_idx stays i // gs), but are processed by decreasing largest diag(H)
  in the group, and the columns inside a group by decreasing diag(H).

Output layout (what GPTQ v1 checkpoints store, see formats/gptq_v1.py): the integers stay in the
*original* column order, and g_idx[i] names the group of input column i.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ...formats.intweight import IntWeight
from ..grid import GRIDS, max_q
from ..metrics import output_error


class NotPositiveDefinite(ValueError):
    """The damped Hessian (or its inverse) has no Cholesky factor."""


@dataclass(frozen=True)
class GPTQOutput:
    weight: IntWeight
    output_error: float  # ||(W - Ŵ) X^T|| / ||W X^T|| on the calibration inputs, from H
    dead_columns: int


HESSIAN_CHUNK_BYTES = 64 << 20  # float64 accumulation converts X to float64 this many bytes at a time


def accumulate_hessian(H: Tensor | None, n_samples: int, x: Tensor,
                       dtype: torch.dtype | None = None) -> tuple[Tensor, int]:
    """Fold the inputs `x` ([batch, seq, in] or [tokens, in]) into the running average H.

    H_new = H * n / (n + b) + 2 / (n + b) * XᵀX, where b is the number of samples in `x`
    (a 2-D input counts as one), exactly the reference's running average, computed with one
    matrix product and no scaled copy of X. Returns (H, n + b); H is updated in place.
    H's dtype: H's own, else `dtype`, else x's (float32 for lower precisions). In float64 the
    product runs on float64 copies of X, HESSIAN_CHUNK_BYTES at a time.
    """
    b = x.shape[0] if x.dim() > 2 else 1
    x2 = x.reshape(-1, x.shape[-1])
    if H is None:
        dt = dtype or (x2.dtype if x2.dtype in (torch.float32, torch.float64) else torch.float32)
        H = torch.zeros(x2.shape[1], x2.shape[1], dtype=dt, device=x2.device)
    total = n_samples + b
    if x2.dtype == H.dtype:
        H.addmm_(x2.t(), x2, beta=n_samples / total, alpha=2.0 / total)
        return H, total
    rows = max(1, HESSIAN_CHUNK_BYTES // (x2.shape[1] * H.element_size()))
    H.mul_(n_samples / total)
    for r in range(0, x2.shape[0], rows):
        c = x2[r:r + rows].to(H.dtype)
        H.addmm_(c.t(), c, alpha=2.0 / total)
    return H, total


def inverse_cholesky_upper(H: Tensor, damp_percent: float) -> Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ with λ = damp_percent · mean(diag H) (Uᵀ U = H⁻¹)."""
    n = H.shape[0]
    damp = damp_percent * torch.diagonal(H).mean()
    Hd = H.clone()
    Hd.diagonal().add_(damp)
    L, info = torch.linalg.cholesky_ex(Hd)
    if int(info) != 0:
        raise NotPositiveDefinite(f"Hessian not positive definite (minor {int(info)} of {n})")
    # cholesky_solve against I, not cholesky_inverse: the same H⁻¹ (to float32 rounding) but
    # 8-12x faster on torch's CPU builds (4096 wide: 2.4 s vs 28 s; bench/results/mixed-*.md)
    Hinv = torch.cholesky_solve(torch.eye(n, dtype=L.dtype, device=L.device), L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0 or not torch.isfinite(U).all():
        raise NotPositiveDefinite(f"inverse Hessian not positive definite (minor {int(info)} of {n})")
    return U


def _quantize_column(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> tuple[Tensor, Tensor]:
    """(q, dequantized) of one column; the dequantized value is scale * (q - zero), the same
    arithmetic as IntWeight.dequantize, so the error fed back is the error the model will see."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


@contextmanager
def _threads(device: torch.device, n: int) -> Iterator[None]:
    """Run the body on `n` CPU threads, restoring the count after (nothing to do off the CPU)."""
    before = torch.get_num_threads()
    if device.type != "cpu" or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread(device: torch.device):
    """The column loop is thousands of tiny ops: on a CPU, splitting each over threads costs more
    in synchronisation than it saves (and on a busy machine every op waits for a time slice:
    measured 10x slower), so it runs on one thread and the thread count is restored after."""
    return _threads(device, 1)


def effective_block(block_size: int, group_size: int | None, columns: int) -> int:
    """The block size, rounded to whole groups when grids are chosen during the loop
    (`group_size` not None), so a group's grid sees fully updated weights. Any block size gives
    the same result; it only trades Python overhead against the size of the in-block updates."""
    b = max(1, block_size)
    if group_size is not None:
        b = group_size if group_size > b else b - b % group_size
    return min(b, columns)


def group_aware_order(diag: Tensor, group_size: int) -> Tensor:
    """Processing order of group-aware reordering: whole groups by decreasing max diag(H), and
    inside each group its columns by decreasing diag(H)."""
    n_groups = diag.numel() // group_size
    d = diag.reshape(n_groups, group_size)
    local = torch.argsort(d, dim=1, descending=True, stable=True)
    order = torch.argsort(d.max(dim=1).values, descending=True, stable=True)
    base = (order * group_size).unsqueeze(1)
    return (base + local[order]).reshape(-1)


def gptq_quantize(W: Tensor, H: Tensor, bits: int, group_size: int, sym: bool, *, desc_act: bool = False,
                  static_groups: bool = False, act_group_aware: bool = False, damp_percent: float = 0.01,
                  block_size: int = 128, factors: dict | None = None, grid: str = "minmax") -> GPTQOutput:
    """Quantize W [out, in] with the Hessian H [in, in] of its inputs.

    Works in float64 when W or H is float64, else float32. Raises
    NotPositiveDefinite when damping is not enough; the caller decides how to retry.
    `factors`: a dict the caller keeps across calls with the *same* W and H (e.g. one layer at
    several bits and group sizes): the Cholesky factor of H⁻¹ is computed once per column order
    and damping and reused from it (the most expensive step at 4096+ columns; same result).
    `grid`: how each group's grid is chosen (grid.GRIDS: "minmax", or "mse" with clipping; the
    "fullrange" forms use every level of a symmetric grid).
    """
    out_f, in_f = W.shape
    gs = in_f if group_size == -1 else group_size
    if in_f % gs:
        raise ValueError(f"group size {gs} does not divide in_features {in_f}")
    n_groups = in_f // gs
    dtype = torch.float64 if torch.float64 in (W.dtype, H.dtype) else torch.float32
    W_orig = W.to(dtype)
    H_orig = H.to(dtype)
    H = H_orig.clone()
    Wt = W_orig.t().contiguous()  # [in, out]: column i of W is the contiguous row i of Wt
    maxq = max_q(bits)
    grid_of = GRIDS[grid]
    grid_threads = 1 if grid in ("minmax", "fullrange") else torch.get_num_threads()  # min/max is cheap

    dead = torch.diagonal(H) == 0
    n_dead = int(dead.sum())
    if n_dead:
        H[dead, dead] = 1
        Wt[dead, :] = 0

    # Grids fixed before any update: one per row (gs = in) or static groups.
    fixed_scale = fixed_zero = None
    if group_size == -1 or static_groups:
        grouped = Wt.reshape(n_groups, gs, out_f).permute(0, 2, 1).reshape(n_groups * out_f, gs)
        s, z = grid_of(grouped, bits, sym)
        fixed_scale = s.reshape(n_groups, out_f).to(dtype)
        fixed_zero = z.reshape(n_groups, out_f).to(dtype)

    gar = act_group_aware and not desc_act and group_size != -1
    perm = None
    if desc_act:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
    elif gar:
        perm = group_aware_order(torch.diagonal(H), gs)
    if perm is not None:
        Wt = Wt[perm]
        H = H[perm][:, perm]

    order = ("desc_act",) if desc_act else ("group_aware", gs) if gar else ("natural",)
    key = (*order, damp_percent, str(dtype))
    U = factors.get(key) if factors is not None else None
    if U is None:
        U = inverse_cholesky_upper(H, damp_percent)
        if factors is not None:
            factors[key] = U

    # group of each processed (possibly permuted) column
    pos = torch.arange(in_f, device=W.device)
    if (fixed_scale is not None and not (group_size == -1)) or gar:
        group_of = (perm if perm is not None else pos) // gs  # static, GAR: the column's own group
    elif group_size == -1:
        group_of = torch.zeros(in_f, dtype=torch.long, device=W.device)
    else:
        group_of = pos // gs  # dynamic: consecutive processed columns
    scales = torch.empty(n_groups, out_f, dtype=dtype, device=W.device)
    zeros = torch.empty(n_groups, out_f, dtype=dtype, device=W.device)
    if fixed_scale is not None:
        scales.copy_(fixed_scale)
        zeros.copy_(fixed_zero)
    dynamic = fixed_scale is None
    group_list = group_of.tolist()

    Qt = torch.empty(in_f, out_f, dtype=dtype, device=W.device)
    B = effective_block(block_size, gs if dynamic else None, in_f)
    for i1 in range(0, in_f, B):
        i2 = min(i1 + B, in_f)
        W1 = Wt[i1:i2]  # a view: updated in place
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.empty(i2 - i1, out_f, dtype=dtype, device=W.device)
        scale = zero = None
        last_g = -1
        with _one_thread(W.device):
            for i in range(i2 - i1):
                j = i1 + i
                g = group_list[j]
                if dynamic and j % gs == 0:
                    with _threads(W.device, grid_threads):  # a search is worth the threads
                        s, z = grid_of(W1[i:i + gs].t(), bits, sym)
                    scales[g] = s.to(dtype)
                    zeros[g] = z.to(dtype)
                if g != last_g:
                    scale, zero, last_g = scales[g], zeros[g], g
                w = W1[i]
                q, dq = _quantize_column(w, scale, zero, maxq)
                Qt[j] = q
                err = (w - dq).div_(U1[i, i])
                Err1[i] = err
                if i + 1 < i2 - i1:
                    W1[i + 1:].addr_(U1[i, i + 1:], err, alpha=-1)
        if i2 < in_f:
            Wt[i2:].addmm_(U[i1:i2, i2:].t(), Err1, alpha=-1)

    if perm is not None:
        inv = torch.argsort(perm)
        Qt = Qt[inv]
        g_idx = group_of[inv]
    else:
        g_idx = group_of
    q = Qt.t().round().to(torch.int32).contiguous()
    weight = IntWeight(q=q.cpu(), scales=scales.float().cpu(), zeros=zeros.float().cpu(),
                       g_idx=g_idx.to(torch.int32).cpu(), bits=bits)
    err = output_error(W_orig, weight.dequantize().to(device=W.device, dtype=dtype), H_orig)
    return GPTQOutput(weight, err, n_dead)
