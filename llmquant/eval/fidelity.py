"""Fidelity to the baseline, beside perplexity: KL divergence of a variant's next-token
distribution from the baseline's, and top-1 agreement, on the same scored positions.

The baseline's distribution at each scored position is kept in a bounded form, its *reference*:
the top-k token ids (k = TOP_K = 64), their log-probabilities, and `logp_rest`, the log of the
probability mass left over (1 - the top-k's mass). A variant's full log-softmax at the same
position is compared with it over k + 1 buckets: the k reference tokens, and one "rest" bucket
holding each distribution's remaining mass (q_rest = 1 - q's mass on the k reference tokens).

    bucket KL = sum_i p_i (log p_i - log q_i) + p_rest (log p_rest - log q_rest)

Merging tokens into a bucket never increases KL (the log-sum inequality), so the bucket KL is a
LOWER bound on the exact KL(p || q). The gap is exactly

    exact KL - bucket KL = p_rest * KL(p(. | rest) || q(. | rest))

(the rest tokens' conditional distributions): it is zero when k covers the vocabulary, and small
when p_rest is small; `rest_mass_mean` (the mean p_rest) is reported so the user sees how much of
the baseline's mass was bucketed. With k >= vocab the bucket KL equals the exact KL.

Everything here is tensor math (no files); `reference.py` stores and reads references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

TOP_K = 64
P99 = 0.99


@dataclass(frozen=True)
class Reference:
    """The baseline's bounded distribution at P positions: ids [P, k] (top-k, most likely first),
    logp [P, k] (their log-probabilities), logp_rest [P] (log of the mass outside them)."""

    ids: Tensor
    logp: Tensor
    logp_rest: Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and near -inf (Maechler 2012)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def reference_from_logits(logits: Tensor, k: int = TOP_K) -> Reference:
    """The reference of the baseline's logits [P, V] (float32 log-softmax; k capped at V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top, ids = torch.topk(logp, min(k, logp.shape[-1]), dim=-1, sorted=True)
    rest = _log1mexp(torch.logsumexp(top, dim=-1))
    if top.shape[-1] == logp.shape[-1]:
        rest = torch.full_like(rest, -math.inf)  # nothing left: exactly zero mass
    return Reference(ids.to(torch.int32), top.float(), rest.float())


def bucket_kl(ref: Reference, logits: Tensor) -> Tensor:
    """Per-position KL(p || q) over the k + 1 buckets [P]: p from the reference, q = softmax of the
    variant's logits [P, V]. A lower bound on the exact KL (see the module docstring)."""
    logq_all = torch.log_softmax(logits.float(), dim=-1)
    logq = logq_all.gather(-1, ref.ids.long())
    p = ref.logp.exp()
    kl = (p * (ref.logp - logq)).sum(-1)
    p_rest = ref.logp_rest.exp()
    logq_rest = _log1mexp(torch.logsumexp(logq, dim=-1))
    # 0 * log(0 / q) = 0; a finite floor on log q_rest keeps p_rest > 0, q_rest = 0 finite (and large)
    rest = torch.where(p_rest > 0, p_rest * (ref.logp_rest - logq_rest.clamp(min=-1e4)), torch.zeros_like(p_rest))
    return (kl + rest).clamp(min=0.0)  # rounding can leave -1e-9 where p == q


def top1_agrees(ref: Reference, logits: Tensor) -> Tensor:
    """[P] bool: the variant's most likely token is the baseline's."""
    return logits.argmax(dim=-1) == ref.ids[:, 0].long()


def exact_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-position exact KL(softmax(p) || softmax(q)) [P], for tests and small vocabularies."""
    lp, lq = torch.log_softmax(logits_p.float(), -1), torch.log_softmax(logits_q.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@dataclass
class FidelityAccumulator:
    """Streams positions in: keeps one KL scalar per position (4 bytes), never logits."""

    top_k: int = TOP_K
    _kl: list[Tensor] = field(default_factory=list)
    _agree: int = 0
    _rest: float = 0.0
    _n: int = 0

    def add(self, ref: Reference, logits: Tensor) -> None:
        self._kl.append(bucket_kl(ref, logits).float().cpu())
        self._agree += int(top1_agrees(ref, logits).sum())
        self._rest += float(ref.logp_rest.exp().double().sum())
        self._n += len(ref)

    def result(self) -> dict:
        if self._n == 0:
            raise ValueError("no positions were compared")
        kl = torch.cat(self._kl).double()
        return summarize(kl, self._agree, self._rest / self._n, self.top_k)


def summarize(kl: Tensor, agree: int, rest_mass_mean: float, top_k: int) -> dict:
    """EvalResult.fidelity from per-position KL values [P] and the count of top-1 agreements."""
    import numpy as np

    n = kl.numel()
    return {"kld_mean": float(kl.mean()), "kld_p99": float(np.quantile(kl.numpy(), P99)),
            "top1": agree / n, "positions": n, "top_k": top_k, "rest_mass_mean": rest_mass_mean}
