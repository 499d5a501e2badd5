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
    kld: float | None = None  # mean KL divergence from the baseline (EvalResult.fidelity)
    top1: float | None = None  # top-1 agreement with the baseline, a fraction


@dataclass(frozen=True)
class Decision:
    winner: str | None
    reason: str
    warnings: tuple[str, ...] = ()  # e.g. the winner answers or decodes slower than the baseline


def delta_pct(ppl: float, baseline_ppl: float) -> float:
    return (ppl / baseline_ppl - 1.0) * 100.0


def speed_ratios(c: Candidate, baseline: Candidate) -> tuple[float | None, float | None]:
    """(TTFT ratio, decode ratio) vs the baseline: above 1 answers slower, below 1 decodes slower."""
    ttft = c.ttft_ms / baseline.ttft_ms if c.ttft_ms and baseline.ttft_ms else None
    dec = c.decode_tok_s / baseline.decode_tok_s if c.decode_tok_s and baseline.decode_tok_s else None
    return ttft, dec


def guard_failure(c: Candidate, baseline: Candidate, spec: SelectSpec) -> str | None:
    """Why `c` fails the recipe's speed guards, or None when it passes (or none are set)."""
    ttft, dec = speed_ratios(c, baseline)
    if spec.min_decode_ratio is not None:
        if dec is None:
            return f"{c.name}: no decode measurement for select.min_decode_ratio"
        if dec < spec.min_decode_ratio:
            return f"{c.name}: decode {dec:.2f}x baseline < select.min_decode_ratio {spec.min_decode_ratio:g}"
    if spec.max_ttft_ratio is not None:
        if ttft is None:
            return f"{c.name}: no first-token latency for select.max_ttft_ratio"
        if ttft > spec.max_ttft_ratio:
            return f"{c.name}: first token {ttft:.2f}x baseline > select.max_ttft_ratio {spec.max_ttft_ratio:g}"
    return fidelity_failure(c, spec)


def fidelity_failure(c: Candidate, spec: SelectSpec) -> str | None:
    """Why `c` fails the recipe's fidelity bounds (select.max_kld, select.min_top1), or None."""
    if spec.max_kld is not None:
        if c.kld is None:
            return f"{c.name}: no KL divergence measured for select.max_kld"
        if c.kld > spec.max_kld:
            return f"{c.name}: KLD {c.kld:.4g} > select.max_kld {spec.max_kld:g}"
    if spec.min_top1 is not None:
        if c.top1 is None:
            return f"{c.name}: no top-1 agreement measured for select.min_top1"
        if c.top1 < spec.min_top1:
            return f"{c.name}: top-1 agreement {c.top1:.4f} < select.min_top1 {spec.min_top1:g}"
    return None


def guard_words(spec: SelectSpec) -> str:
    """What the guards are called in reasons: speed guards, and the fidelity bounds when set."""
    return "speed and fidelity guards" if spec.max_kld is not None or spec.min_top1 is not None else "speed guards"


SAME_SPEED = 0.01
"""Ratios within 1 % of 1.0 are reported as the same speed: medians of a few timed runs on a
shared CPU do not resolve finer differences (repeat runs of the demo differ by more)."""


def slowdown_warnings(c: Candidate, baseline: Candidate, spec: SelectSpec) -> tuple[str, ...]:
    ttft, dec = speed_ratios(c, baseline)
    out, unguarded = [], []
    if ttft is not None and ttft > 1.0 + SAME_SPEED:
        out.append(f"winner {c.name} answers the first token {ttft:.2f}x slower than the baseline "
                   f"({c.ttft_ms:.1f} vs {baseline.ttft_ms:.1f} ms)")
        if spec.max_ttft_ratio is None:
            unguarded.append("select.max_ttft_ratio")
    if dec is not None and dec < 1.0 - SAME_SPEED:
        out.append(f"winner {c.name} decodes at {dec:.2f}x the baseline's speed "
                   f"({c.decode_tok_s:.1f} vs {baseline.decode_tok_s:.1f} tok/s)")
        if spec.min_decode_ratio is None:
            unguarded.append("select.min_decode_ratio")
    if unguarded:
        out.append(f"set {' / '.join(unguarded)} to rule out slower variants")
    return tuple(out)


def pick_winner(baseline: Candidate, candidates: list[Candidate], spec: SelectSpec) -> Decision:
    """The variant the policy picks among those within the perplexity limit and the speed guards;
    warnings when the winner is slower than the baseline (guards unset or loose)."""
    d = _pick(baseline, candidates, spec)
    if d.winner is None:
        return d
    winner = next(c for c in candidates if c.name == d.winner)
    return Decision(d.winner, d.reason, slowdown_warnings(winner, baseline, spec))


def _pick(baseline: Candidate, candidates: list[Candidate], spec: SelectSpec) -> Decision:
    if not candidates:
        return Decision(None, "no variants were evaluated")
    failures = [f for f in (guard_failure(c, baseline, spec) for c in candidates) if f]
    guarded = [c for c in candidates if guard_failure(c, baseline, spec) is None]
    if not guarded:
        return Decision(None, f"no variant passes the {guard_words(spec)} (" + "; ".join(failures) + "): keep the baseline")
    excluded = f"; excluded by {guard_words(spec)}: {'; '.join(failures)}" if failures else ""
    limit, base_ppl = spec.max_ppl_increase_pct, baseline.ppl
    if spec.policy == "best_ppl":
        best = min(guarded, key=lambda c: (c.ppl, c.size_bytes))
        return Decision(best.name, f"{best.name}: lowest perplexity ({best.ppl:.3f}, "
                                   f"{delta_pct(best.ppl, base_ppl):+.2f} % vs baseline){excluded}")
    ok = [c for c in guarded if delta_pct(c.ppl, base_ppl) <= limit]
    if not ok:
        best = min(guarded, key=lambda c: c.ppl)
        return Decision(None, (f"no variant is within {limit:g} % of the baseline perplexity "
                               f"(closest: {best.name}, {delta_pct(best.ppl, base_ppl):+.2f} %): keep the "
                               f"baseline, or try a stronger method (GPTQ, AWQ) or more bits{excluded}"))
    if spec.policy == "smallest_within":
        w = min(ok, key=lambda c: (c.size_bytes, c.ppl))
        return Decision(w.name, (f"{w.name}: the smallest ({w.size_bytes / 1e6:.1f} MB) of the {len(ok)} variant(s) "
                                 f"within {limit:g} % of baseline perplexity ({delta_pct(w.ppl, base_ppl):+.2f} %)"
                                 f"{excluded}"))
    timed = [c for c in ok if c.ttft_ms is not None]
    if not timed:
        return Decision(None, "policy fastest_within needs latency measurements (eval.latency.enabled)")
    w = min(timed, key=lambda c: (c.ttft_ms, -(c.decode_tok_s or 0)))
    return Decision(w.name, (f"{w.name}: the lowest first-token latency ({w.ttft_ms:.1f} ms) of the {len(ok)} "
                             f"variant(s) within {limit:g} % of baseline perplexity "
                             f"({delta_pct(w.ppl, base_ppl):+.2f} %){excluded}"))
