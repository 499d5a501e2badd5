"""Perplexity on the GPTQ/AWQ papers' protocol.

The token stream is cut into non-overlapping windows of `seqlen` (the remainder dropped,
optionally only the first `max_windows`). Within a window every token after the first is
predicted from the window's start: seqlen - 1 predictions per window, and
ppl = exp(total NLL / predicted tokens) — equal to the reference's exp(mean of window means).
Logits are computed a chunk of positions at a time, so the [seqlen, vocab] matrix of a whole
batch never exists in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..progress import NULL_PROGRESS, Progress

PROTOCOL_NAME = "gptq-paper"
Observer = Callable[[int, int, Tensor], None]
"""observe(window, start, logits [T, V] float32): the logits predicting tokens start+1 .. start+T of
a window (eval/reference.py: the baseline's reference, a variant's fidelity)."""
SPECIAL_LOGIT_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll_sum: float
    tokens_scored: int
    windows: int
    documents: int | None = None  # lm-eval-word: documents scored
    words: int | None = None  # lm-eval-word: the denominator of word perplexity


def window_count(n_tokens: int, seqlen: int, max_windows: int | None) -> int:
    n = n_tokens // seqlen
    return min(n, max_windows) if max_windows else n


def _plain_head(model: nn.Module) -> bool:
    """True when logits are exactly lm_head(hidden) (no soft-capping or scaling)."""
    cfg = model.config
    return all(getattr(cfg, a, None) in (None, 1, 1.0) for a in SPECIAL_LOGIT_ATTRS) \
        and model.get_output_embeddings() is not None


def chunked_nll(hidden: Tensor, targets: Tensor, head: nn.Module, chunk: int = 256,
                observe: Callable[[int, Tensor], None] | None = None) -> float:
    """Sum of -log p(target) with logits = head(hidden), `chunk` positions at a time (fp32 softmax);
    observe(start, logits [T, V]) sees each chunk of a one-row `hidden`."""
    total = 0.0
    length = hidden.shape[1]
    for s in range(0, length, chunk):
        logits = head(hidden[:, s:s + chunk]).float()
        if observe is not None:
            observe(s, logits[0])
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                       targets[:, s:s + chunk].reshape(-1), reduction="sum"))
    return total


@torch.inference_mode()
def nll_at(model: nn.Module, x: Tensor, start: int, targets: Tensor) -> float:
    """Sum of -log p(targets[:, j] | x[:, :start + j + 1]) over j: the model reads x [B, L] and the
    logits at positions start .. start + T - 1 are scored against targets [B, T].

    Every protocol (paper, llama.cpp, lm-eval rolling windows) is this with other slices."""
    n = targets.shape[1]
    if _plain_head(model):
        hidden = model.base_model(input_ids=x, use_cache=False).last_hidden_state
        return chunked_nll(hidden[:, start:start + n], targets, model.get_output_embeddings())
    logits = model(input_ids=x, use_cache=False).logits[:, start:start + n].float()
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))


@torch.inference_mode()
def window_nll(model: nn.Module, x: Tensor, observe: Observer | None = None) -> list[float]:
    """NLL sum of tokens 1.. of each row of x [B, L], each row scored from its own start (one
    batched forward; the loss is summed per row). observe(row, start, logits) sees every scored logit."""
    def row_observer(i: int):
        return None if observe is None else (lambda s, logits: observe(i, s, logits))

    if _plain_head(model):
        hidden = model.base_model(input_ids=x, use_cache=False).last_hidden_state
        head = model.get_output_embeddings()
        return [chunked_nll(hidden[i:i + 1, :-1], x[i:i + 1, 1:], head, observe=row_observer(i))
                for i in range(x.shape[0])]
    logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
    if observe is not None:
        for i in range(x.shape[0]):
            observe(i, 0, logits[i])
    return [float(F.cross_entropy(logits[i], x[i, 1:], reduction="sum")) for i in range(x.shape[0])]


def perplexity(model: nn.Module, ids: Tensor, seqlen: int, max_windows: int | None = None,
               batch_size: int = 1, device: str | torch.device = "cpu",
               progress: Progress = NULL_PROGRESS, observe: Observer | None = None) -> PerplexityResult:
    """observe(window, start, logits): every scored position's logits, windows in order."""
    n = window_count(ids.shape[-1], seqlen, max_windows)
    if n == 0:
        raise ValueError(f"{ids.shape[-1]} tokens hold no window of {seqlen}")
    windows = ids.reshape(-1)[: n * seqlen].view(n, seqlen)
    nll: list[float] = []
    with progress.task("perplexity", total=n) as advance:
        for b in range(0, n, batch_size):
            x = windows[b:b + batch_size].to(device)
            nll.extend(window_nll(model, x, None if observe is None else
                                  (lambda i, s, logits, b=b: observe(b + i, s, logits))))
            advance(x.shape[0], note=f"ppl so far {math.exp(sum(nll) / (len(nll) * (seqlen - 1))):.3f}")
    total = sum(nll)
    scored = n * (seqlen - 1)
    return PerplexityResult(ppl=math.exp(total / scored), nll_sum=total, tokens_scored=scored, windows=n)
