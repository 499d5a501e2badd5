"""Picking the winner among validated classic variants (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass

from ..winner import Decision
from .recipe import ClassicSelectSpec


@dataclass(frozen=True)
class ClassicCandidate:
    name: str
    metric: float  # accuracy, percent
    size_bytes: int
    latency_ms: float | None = None
    nonfinite: int = 0


def pick_classic(baseline_metric: float, baseline_latency_ms: float | None, candidates: list[ClassicCandidate],
                 spec: ClassicSelectSpec) -> Decision:
    sound = [c for c in candidates if not c.nonfinite]
    if not sound:
        return Decision(None, "no variant produced finite outputs" if candidates else "no variants were evaluated")
    limit = spec.max_loss_pts
    if spec.policy == "best_accuracy":
        w = max(sound, key=lambda c: (c.metric, -c.size_bytes))
        return Decision(w.name, f"{w.name}: the highest accuracy ({w.metric:.2f} %, "
                                f"{w.metric - baseline_metric:+.2f} pts vs baseline)")
    ok = [c for c in sound if baseline_metric - c.metric <= limit]
    if not ok:
        best = max(sound, key=lambda c: c.metric)
        return Decision(None, f"no variant is within {limit:g} pts of the baseline accuracy (closest: {best.name}, "
                              f"{best.metric - baseline_metric:+.2f} pts): keep the baseline, or try QAT or "
                              "mixed precision")
    if spec.policy == "smallest_within":
        w = min(ok, key=lambda c: (c.size_bytes, -c.metric))
        return Decision(w.name, f"{w.name}: the smallest ({w.size_bytes / 1e6:.2f} MB) of the {len(ok)} variant(s) "
                                f"within {limit:g} pts of baseline accuracy ({w.metric - baseline_metric:+.2f} pts)")
    timed = [c for c in ok if c.latency_ms is not None]
    if not timed:
        return Decision(None, "policy fastest_within needs latency measurements")
    w = min(timed, key=lambda c: (c.latency_ms, c.size_bytes))
    speed = f", {baseline_latency_ms / w.latency_ms:.2f}x the baseline's speed" if baseline_latency_ms else ""
    if baseline_latency_ms and w.latency_ms >= baseline_latency_ms:
        return Decision(None, f"no variant within {limit:g} pts is faster than the baseline at batch 1 "
                              f"(fastest: {w.name}, {w.latency_ms:.3f} ms vs {baseline_latency_ms:.3f} ms): "
                              "keep the baseline for latency")
    return Decision(w.name, f"{w.name}: the lowest batch-1 latency ({w.latency_ms:.3f} ms{speed}) of the {len(ok)} "
                            f"variant(s) within {limit:g} pts of baseline accuracy "
                            f"({w.metric - baseline_metric:+.2f} pts)")
