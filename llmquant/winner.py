"""Picking the winner among evaluated variants by the recipe's policy (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass

from .recipe import SelectSpec


@dataclass(frozen=True)
class Candidate:
    name: str
    size_bytes: int
    ppl: float
    ttft_ms: float | None = None
    decode_tok_s: float | None = None


@dataclass(frozen=True)
class Decision:
    winner: str | None
    reason: str


def delta_pct(ppl: float, baseline_ppl: float) -> float:
    return (ppl / baseline_ppl - 1.0) * 100.0


def pick_winner(baseline_ppl: float, candidates: list[Candidate], spec: SelectSpec) -> Decision:
    if not candidates:
        return Decision(None, "no variants were evaluated")
    limit = spec.max_ppl_increase_pct
    if spec.policy == "best_ppl":
        best = min(candidates, key=lambda c: (c.ppl, c.size_bytes))
        return Decision(best.name, f"{best.name}: lowest perplexity ({best.ppl:.3f}, "
                                   f"{delta_pct(best.ppl, baseline_ppl):+.2f} % vs baseline)")
    ok = [c for c in candidates if delta_pct(c.ppl, baseline_ppl) <= limit]
    if not ok:
        best = min(candidates, key=lambda c: c.ppl)
        return Decision(None, (f"no variant is within {limit:g} % of the baseline perplexity "
                               f"(closest: {best.name}, {delta_pct(best.ppl, baseline_ppl):+.2f} %): keep the "
                               "baseline, or try a stronger method (GPTQ, AWQ) or more bits"))
    if spec.policy == "smallest_within":
        w = min(ok, key=lambda c: (c.size_bytes, c.ppl))
        return Decision(w.name, (f"{w.name}: the smallest ({w.size_bytes / 1e6:.1f} MB) of the {len(ok)} variant(s) "
                                 f"within {limit:g} % of baseline perplexity ({delta_pct(w.ppl, baseline_ppl):+.2f} %)"))
    timed = [c for c in ok if c.ttft_ms is not None]
    if not timed:
        return Decision(None, "policy fastest_within needs latency measurements (eval.latency.enabled)")
    w = min(timed, key=lambda c: (c.ttft_ms, -(c.decode_tok_s or 0)))
    return Decision(w.name, (f"{w.name}: the lowest first-token latency ({w.ttft_ms:.1f} ms) of the {len(ok)} "
                             f"variant(s) within {limit:g} % of baseline perplexity "
                             f"({delta_pct(w.ppl, baseline_ppl):+.2f} %)"))
