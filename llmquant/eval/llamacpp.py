"""Perplexity the way llama.cpp's `llama-perplexity` measures it (protocol "llama-cpp").

The rule, read from ggml-org/llama.cpp `tools/perplexity/perplexity.cpp`, function `perplexity()`:
- the whole text is tokenised once, with the BOS token when the vocabulary adds one;
- at least 2 * n_ctx tokens are required ("you need at least ... tokens");
- the stream is cut into n_chunk = n_tokens // n_ctx non-overlapping chunks of n_ctx tokens
  (the remainder dropped; `--chunks` limits the count), each evaluated from an empty KV cache;
- when the vocabulary adds BOS, the first token of every chunk is replaced by BOS;
- only the second half is scored: with first = n_ctx / 2 (integer division), the logits at
  positions first .. n_ctx - 2 predict tokens first + 1 .. n_ctx - 1, i.e. n_ctx - 1 - first
  tokens per chunk (255 for the default n_ctx of 512);
- ppl = exp(total NLL / total scored tokens).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..progress import NULL_PROGRESS, Progress
from .perplexity import PerplexityResult, nll_at

PROTOCOL_NAME = "llama-cpp"
DEFAULT_CTX = 512


def first_scored(n_ctx: int) -> int:
    """Position of the first logit that is scored in a chunk (llama.cpp's `first`)."""
    return n_ctx // 2


def scored_per_chunk(n_ctx: int) -> int:
    return n_ctx - 1 - first_scored(n_ctx)


def chunk_count(n_tokens: int, n_ctx: int, max_chunks: int | None) -> int:
    """Chunks llama.cpp evaluates; ValueError below its minimum of 2 * n_ctx tokens."""
    if n_ctx < 4:
        raise ValueError(f"a llama.cpp context must be at least 4 tokens, got {n_ctx}")
    if n_tokens < 2 * n_ctx:
        raise ValueError(f"{n_tokens} tokens are fewer than the 2 x {n_ctx} llama.cpp's perplexity needs")
    n = n_tokens // n_ctx
    return min(n, max_chunks) if max_chunks else n


def chunk_inputs(ids: Tensor, n_ctx: int, n_chunks: int, bos_id: int | None) -> Tensor:
    """[n_chunks, n_ctx] model inputs: consecutive chunks, first token set to BOS when given."""
    x = ids.reshape(-1)[: n_chunks * n_ctx].view(n_chunks, n_ctx).clone()
    if bos_id is not None:
        x[:, 0] = bos_id
    return x


@torch.inference_mode()
def llamacpp_perplexity(model: nn.Module, ids: Tensor, n_ctx: int = DEFAULT_CTX, max_chunks: int | None = None,
                        bos_id: int | None = None, batch_size: int = 1, device: str | torch.device = "cpu",
                        progress: Progress = NULL_PROGRESS) -> PerplexityResult:
    n = chunk_count(ids.shape[-1], n_ctx, max_chunks)
    inputs = chunk_inputs(ids, n_ctx, n, bos_id)
    first, per = first_scored(n_ctx), scored_per_chunk(n_ctx)
    total = 0.0
    with progress.task("perplexity (llama.cpp chunks)", total=n) as advance:
        for b in range(0, n, batch_size):
            x = inputs[b:b + batch_size].to(device)
            total += nll_at(model, x, first, x[:, first + 1:])
            done = min(b + batch_size, n)
            advance(x.shape[0], note=f"ppl so far {math.exp(total / (done * per)):.3f}")
    return PerplexityResult(ppl=math.exp(total / (n * per)), nll_sum=total, tokens_scored=n * per, windows=n)
