"""Tuning one decoder block's rounding by SignRound (signround_math.py): each step runs one batch
through the block with every target Linear's weight replaced by its fake-quantized form, takes the
mean squared error against the float block's output on the same input, and moves every learned
tensor one signed step. The tensors of the step with the lowest loss are kept (as AutoRound does:
each step's loss is on its own batch, so "lowest" is a noisy choice)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..targets import LayerSettings
from .signround_math import Rounding, fake_quantize, initial_rounding, learning_rate, sign_step


@dataclass(frozen=True)
class TuneOptions:
    iters: int
    lr: float  # of the rounding offsets v
    factor_lr: float  # of the range factors alpha, beta (0: not tuned)
    seed: int = 0
    full_range: bool = False  # symmetric grids use every level (signround_math)


@dataclass
class TuneResult:
    rounding: dict[str, Rounding]  # by the Linear's name relative to the block
    first_loss: float | None = None  # the first step's loss (round to nearest, before any update)
    best_loss: float | None = None
    best_step: int | None = None
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """One step's data: the block's input and other arguments, and the float block's output."""

    x: Tensor
    args: tuple
    kwargs: dict
    target: Tensor


def batch_order(n_batches: int, iters: int, seed: int) -> list[int]:
    """Which batch each step uses: seeded random permutations of all batches, one after another."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < iters:
        order.extend(torch.randperm(n_batches, generator=gen).tolist())
    return order[:iters]


def tune_block(block: nn.Module, settings: dict[str, LayerSettings], batches: Callable[[int], Batch],
               n_batches: int, opts: TuneOptions, on_step: Callable[[int, float], None] | None = None
               ) -> TuneResult:
    """SignRound on `block`, whose Linears named in `settings` (relative names) are quantized.
    `batches(i)` gives batch i of `n_batches`. The block itself is not modified."""
    dtypes = {n: block.get_submodule(n).weight.dtype for n in settings}
    weights = {n: block.get_submodule(n).weight.detach().float() for n in settings}
    rounding = {n: initial_rounding(w, settings[n].group_size) for n, w in weights.items()}
    result = TuneResult({n: r.clone() for n, r in rounding.items()})
    if opts.iters == 0 or n_batches == 0:
        return result
    for r in rounding.values():
        r.v.requires_grad_(True)
        r.alpha.requires_grad_(opts.factor_lr > 0)
        r.beta.requires_grad_(opts.factor_lr > 0)
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    best = float("inf")
    try:
        with torch.enable_grad():
            for step, b in enumerate(batch_order(n_batches, opts.iters, opts.seed)):
                batch = batches(b)
                params = {f"{n}.weight": fake_quantize(w, rounding[n], s.bits, s.group_size, s.sym,
                                                       opts.full_range).to(dtypes[n])
                          for n, w in weights.items() for s in (settings[n],)}
                out = functional_call(block, params, (batch.x, *batch.args), batch.kwargs)
                out = out[0] if isinstance(out, (tuple, list)) else out
                loss = F.mse_loss(out.float(), batch.target.float())
                loss.backward()
                value = loss.item()
                result.losses.append(value)
                if value < best:  # the tensors that gave this loss: before this step's update
                    best = value
                    result.rounding = {n: r.clone() for n, r in rounding.items()}
                    result.best_loss, result.best_step = value, step
                lr = learning_rate(opts.lr, step, opts.iters)
                factor_lr = learning_rate(opts.factor_lr, step, opts.iters)
                for r in rounding.values():
                    sign_step(r, lr, factor_lr)
                if on_step is not None:
                    on_step(step, value)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    result.first_loss = result.losses[0]
    return result
