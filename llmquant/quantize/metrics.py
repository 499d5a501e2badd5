"""How far a quantized weight is from its original: the two per-layer errors every report carries,
as pure tensor-in, float-out functions (one copy for every method and for the peers)."""

from __future__ import annotations

import math

from torch import Tensor


def relative_error(w: Tensor, w_hat: Tensor) -> float:
    """Relative Frobenius weight error ||W - Ŵ|| / ||W||, in float32 on `w`'s device."""
    w = w.detach().float()
    d = w - w_hat.detach().float().to(w.device)
    return float(d.norm() / w.norm().clamp_min(1e-12))


def output_error(w: Tensor, w_hat: Tensor, H: Tensor) -> float:
    """Relative output error ||(Ŵ - W) Xᵀ|| / ||W Xᵀ|| on the inputs whose Gram matrix is H = XᵀX:
    sqrt(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)), computed in H's dtype. A weight whose outputs are all zero
    scores 0 when Ŵ's are too, infinity otherwise."""
    dtype = H.dtype
    w = w.to(dtype)
    d = w - w_hat.to(dtype)
    num = float(((d @ H) * d).sum())
    den = float(((w @ H) * w).sum())
    if den <= 0:
        return 0.0 if num <= 0 else math.inf
    return math.sqrt(max(num, 0.0) / den)
