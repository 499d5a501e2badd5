"""EvalResult and the protocol that makes two results comparable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..runs import content_hash
from .latency import LatencyResult


@dataclass(frozen=True)
class Protocol:
    """Everything that changes a perplexity or latency number. Results are ranked together
    only when their protocol keys are equal."""

    name: str  # "gptq-paper" | "lm-eval-word" | "llama-cpp" (eval/protocols.py)
    corpus: str  # label, for people
    corpus_sha256: str  # of the text
    tokens_sha256: str  # of the token stream: pins the tokenizer too
    seqlen: int
    windows: int
    tokens_scored: int
    dtype: str
    device: str
    latency: str  # how latency was measured ("none" when it was not): part of what is compared
    documents: int | None = None  # lm-eval-word only
    words: int | None = None  # lm-eval-word only: the denominator of its word perplexity

    @property
    def key(self) -> str:
        # fields a protocol does not use are left out, so adding one keeps older keys valid
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d.pop("corpus")
        return content_hash(d)

    def describe(self) -> str:
        if self.name == "lm-eval-word":
            what = (f"{self.documents} documents in {self.windows} rolling windows of {self.seqlen} tokens "
                    f"({self.tokens_scored} scored), word perplexity over {self.words} words")
        elif self.name == "llama-cpp":
            what = (f"{self.windows} chunks x {self.seqlen} tokens, second half scored "
                    f"({self.tokens_scored} scored)")
        else:
            what = f"{self.windows} windows x {self.seqlen} tokens ({self.tokens_scored} scored)"
        return f"{self.name}: {self.corpus}, {what}, {self.dtype} on {self.device}; latency {self.latency}"


@dataclass(frozen=True)
class EvalResult:
    ppl: float
    nll_sum: float
    protocol: Protocol
    size_bytes: int  # weight files on disk
    weights_bytes: int  # parameters + buffers resident after loading
    peak_rss_bytes: int | None  # peak resident memory of the evaluating process
    isolated: bool  # True when the process evaluated only this checkpoint
    latency: LatencyResult | None
    seconds: dict[str, float] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    check: dict | None = None  # 16-bit vs float32 on the first windows (see EvalJob.check_windows)
    # KL divergence from the baseline and top-1 agreement (eval/fidelity.py): kld_mean, kld_p99, top1,
    # positions, top_k, rest_mass_mean; None for the baseline and for protocols without fidelity
    fidelity: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        d = dict(d)
        d["protocol"] = Protocol(**d["protocol"])
        d["latency"] = LatencyResult(**d["latency"]) if d.get("latency") else None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
