"""Token-by-token generation for the built-in server: prefill once, then one token at a time with
the KV cache; greedy or temperature / top-p sampling with a seed; text released as it becomes
final (never half a UTF-8 character, never the start of a stop string that may still complete).

`sample_token` and `TextStream` are pure; `Decoder` holds the model and runs one forward per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..eval.latency import cache_kwarg


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


def sample_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Next token from 1-D logits: argmax when temperature is 0, else a draw from the smallest set
    of most likely tokens whose probability reaches top_p (the most likely one always kept)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of the tokens ranked above
        sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
        pick = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """Turns generated token ids into text deltas; finds stop strings (the text before one is kept)."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = 0  # characters already released
        self.stopped = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Add a token; return the text that is now final. Sets `stopped` on a stop string."""
        self.ids.append(token)
        text = self._text()
        hits = [i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(text[:min(hits)], len(text[:min(hits)]))
        safe = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence decodes as U+FFFD
        for s in self.stop:  # hold back a tail that could grow into a stop string
            for k in range(min(len(s) - 1, safe - self.sent), 0, -1):
                if text[safe - k:safe] == s[:k]:
                    safe -= k
                    break
        return self._release(text, safe)

    def flush(self) -> str:
        """The rest of the text once generation has ended (by length or end of sequence)."""
        return "" if self.stopped else self._release(self._text(), None)

    def _release(self, text: str, upto: int | None) -> str:
        upto = len(text) if upto is None else upto
        if upto <= self.sent:
            return ""
        out, self.sent = text[self.sent:upto], upto
        return out


def eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        v = getattr(src, "eos_token_id", None)
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


class Decoder:
    """One model, called from one thread at a time (the server serialises generations)."""

    def __init__(self, model: nn.Module, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.eos = eos_ids(model, tokenizer)
        self._kw = cache_kwarg(model)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.vocab = model.get_input_embeddings().num_embeddings  # token ids a prompt may hold

    def warm_up(self, prompt_tokens: int = 128) -> None:
        """One prompt and one decode step, so one-time work (compiling packed layers' kernels,
        thread pools) happens before the first request instead of inside it."""
        n = min(prompt_tokens, self.max_positions - 1) if self.max_positions else prompt_tokens
        _, cache = self.prefill([0] * max(1, n))
        self.step(0, cache)

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> tuple[Tensor, Any]:
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float().cpu(), _cache_of(out)

    @torch.inference_mode()
    def step(self, token: int, cache: Any) -> tuple[Tensor, Any]:
        out = self.model(input_ids=torch.tensor([[token]], device=self.device), use_cache=True, logits_to_keep=1,
                         **{self._kw: cache})
        return out.logits[0, -1].float().cpu(), _cache_of(out)


def _cache_of(out) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
