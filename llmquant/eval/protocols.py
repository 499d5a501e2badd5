"""The perplexity protocols, one explicit table. Results of different protocols are never ranked
together: the protocol's name is part of `Protocol.key`, and the leaderboard groups by that key.

- "gptq-paper" (default): the GPTQ/AWQ papers' non-overlapping windows, token perplexity.
- "lm-eval-word": lm-evaluation-harness's wikitext task, document rolling windows, word perplexity.
- "llama-cpp": llama.cpp's `llama-perplexity`, chunks of n_ctx, second half of each scored.

Each entry turns a corpus into the tensors saved for the evaluating process (`prepare`), says
what will be scored before anything runs (`plan`, used in cache keys), and scores a model (`score`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..progress import NULL_PROGRESS, Progress
from . import lmeval, llamacpp, perplexity
from .perplexity import PerplexityResult

Tensors = dict[str, Tensor]


@dataclass(frozen=True)
class Plan:
    """What a protocol will score on a given token file (known before the model runs)."""

    windows: int
    tokens_scored: int
    documents: int | None = None
    words: int | None = None


@dataclass(frozen=True)
class ProtocolEntry:
    name: str
    summary: str
    default_seqlen: int
    prepare: Callable[[Any, str, Tensor], Tensors]
    plan: Callable[[Tensors, int, int | None], Plan]
    score: Callable[..., PerplexityResult]
    fidelity: bool = False  # every position of whole windows scored: KL and top-1 vs the baseline (fidelity.py)


# -- gptq-paper --------------------------------------------------------------------------------

def _paper_prepare(tokenizer, text: str, stream: Tensor) -> Tensors:
    return {"input_ids": stream}


def _paper_plan(t: Tensors, seqlen: int, max_windows: int | None) -> Plan:
    n = perplexity.window_count(t["input_ids"].shape[-1], seqlen, max_windows)
    if n == 0:
        raise ValueError(f"{t['input_ids'].shape[-1]} tokens hold no window of {seqlen}")
    return Plan(n, n * (seqlen - 1))


def _paper_score(model: nn.Module, t: Tensors, seqlen: int, max_windows: int | None, batch_size: int,
                 device, progress: Progress, observe: perplexity.Observer | None = None) -> PerplexityResult:
    return perplexity.perplexity(model, t["input_ids"], seqlen, max_windows, batch_size, device, progress, observe)


# -- llama-cpp ---------------------------------------------------------------------------------

def adds_bos(tokenizer) -> bool:
    """True when the tokenizer puts BOS before encoded text (llama.cpp's add_bos)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a").input_ids
    return bos is not None and len(ids) > 0 and ids[0] == bos


def _llamacpp_prepare(tokenizer, text: str, stream: Tensor) -> Tensors:
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    return {"input_ids": stream, "bos_id": torch.tensor(bos, dtype=torch.long)}


def _llamacpp_plan(t: Tensors, seqlen: int, max_windows: int | None) -> Plan:
    n = llamacpp.chunk_count(t["input_ids"].shape[-1], seqlen, max_windows)
    return Plan(n, n * llamacpp.scored_per_chunk(seqlen))


def _llamacpp_score(model: nn.Module, t: Tensors, seqlen: int, max_windows: int | None, batch_size: int,
                    device, progress: Progress) -> PerplexityResult:
    bos = int(t["bos_id"][0]) if t["bos_id"].numel() else None
    return llamacpp.llamacpp_perplexity(model, t["input_ids"], seqlen, max_windows, bos, batch_size, device, progress)


# -- lm-eval-word ------------------------------------------------------------------------------

def _lmeval_prepare(tokenizer, text: str, stream: Tensor) -> Tensors:
    pages = lmeval.wikitext_pages(text)
    docs = [tokenizer(lmeval.wikitext_detokenize(p), add_special_tokens=False).input_ids for p in pages]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition documents on")
    return {
        "input_ids": torch.tensor([i for d in docs for i in d], dtype=torch.long).unsqueeze(0),
        "doc_lengths": torch.tensor([len(d) for d in docs], dtype=torch.long),
        "doc_words": torch.tensor([lmeval.count_words(p) for p in pages], dtype=torch.long),
        "prefix_id": torch.tensor([prefix], dtype=torch.long),
    }


def _documents(t: Tensors, max_docs: int | None) -> tuple[lmeval.Documents, int]:
    docs = lmeval.Documents(t["input_ids"].reshape(-1), t["doc_lengths"].tolist(), t["doc_words"].tolist(),
                            int(t["prefix_id"][0]))
    n = min(len(docs.lengths), max_docs) if max_docs else len(docs.lengths)
    return docs, n


def _lmeval_plan(t: Tensors, seqlen: int, max_windows: int | None) -> Plan:
    docs, n = _documents(t, max_windows)
    if n == 0 or sum(docs.lengths[:n]) == 0:
        raise ValueError("the corpus holds no document to score")
    return Plan(lmeval.window_count(docs.lengths[:n], seqlen), sum(docs.lengths[:n]), n, sum(docs.words[:n]))


def _lmeval_score(model: nn.Module, t: Tensors, seqlen: int, max_windows: int | None, batch_size: int,
                  device, progress: Progress) -> PerplexityResult:
    docs, _ = _documents(t, max_windows)
    return lmeval.word_perplexity(model, docs, seqlen, max_windows, device, progress)


PROTOCOLS: dict[str, ProtocolEntry] = {
    perplexity.PROTOCOL_NAME: ProtocolEntry(
        perplexity.PROTOCOL_NAME, "GPTQ/AWQ papers: non-overlapping windows, token perplexity", 2048,
        _paper_prepare, _paper_plan, _paper_score, fidelity=True),
    lmeval.PROTOCOL_NAME: ProtocolEntry(
        lmeval.PROTOCOL_NAME, "lm-evaluation-harness wikitext: document rolling windows, word perplexity", 2048,
        _lmeval_prepare, _lmeval_plan, _lmeval_score),
    llamacpp.PROTOCOL_NAME: ProtocolEntry(
        llamacpp.PROTOCOL_NAME, "llama.cpp llama-perplexity: n_ctx chunks, second half scored", llamacpp.DEFAULT_CTX,
        _llamacpp_prepare, _llamacpp_plan, _llamacpp_score),
}


def get_protocol(name: str) -> ProtocolEntry:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; allowed: {', '.join(PROTOCOLS)}") from None


def tensors_sha256(t: Tensors) -> str:
    """Hash of what is scored: the token stream alone (the paper protocol), else every tensor by name."""
    def raw(x: Tensor) -> bytes:
        return x.to(torch.int64).contiguous().numpy().tobytes()

    if set(t) == {"input_ids"}:
        return hashlib.sha256(raw(t["input_ids"])).hexdigest()
    h = hashlib.sha256()
    for k in sorted(t):
        h.update(k.encode() + b"\0" + raw(t[k]))
    return h.hexdigest()


def tensors_bytes(t: Tensors) -> bytes:
    """The safetensors file of what is scored (EvalJob.tokens_path holds it)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in t.items()})


def eval_tensors(name: str, tokenizer, text: str, stream: Tensor) -> Tensors:
    """The tensors a protocol scores, from the corpus text and its token stream; UserError when it cannot."""
    from ..errors import UserError

    try:
        return get_protocol(name).prepare(tokenizer, text, stream)
    except ValueError as e:
        raise UserError(f"eval.protocol: {name}: {e}") from None


def score(name: str, model: nn.Module, t: Tensors, seqlen: int, max_windows: int | None = None,
          batch_size: int = 1, device: str | torch.device = "cpu",
          progress: Progress = NULL_PROGRESS, observe: perplexity.Observer | None = None) -> PerplexityResult:
    """Perplexity under protocol `name`; `observe` sees the scored logits (protocols with `fidelity` only)."""
    entry = get_protocol(name)
    if observe is None:
        return entry.score(model, t, seqlen, max_windows, batch_size, device, progress)
    if not entry.fidelity:
        raise ValueError(f"protocol {name} does not measure fidelity (KL divergence, top-1)")
    return entry.score(model, t, seqlen, max_windows, batch_size, device, progress, observe=observe)
