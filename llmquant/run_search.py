"""A variant with a quality bound (a mixed variant's `budget: {max_ppl_increase_pct: X}` or
`{max_kld: X}`): quantize and evaluate it at a size budget, then at the next one search.py picks,
until the bracket closes. Each attempt is an ordinary cached variant step named
`<name>.<bits>b`, so an interrupted search resumes where it stopped; the variant's outcome is
the attempt kept (its checkpoint, result and summary), with every attempt listed in the summary."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .eval.results import EvalResult
from .run_inputs import RunInputs
from .run_steps import VariantOutcome
from .search import Attempt, chosen, next_bits
from .winner import delta_pct

PREDICT_TOLERANCE = 0.1  # bits: the bracket width at which the search stops


def measured(key: str, result: EvalResult, baseline: EvalResult) -> float:
    """The value a result shows against the bound `key`."""
    if key == "max_ppl_increase_pct":
        return delta_pct(result.ppl, baseline.ppl)
    if key == "max_kld":
        fid = getattr(result, "fidelity", None) or {}
        if fid.get("kld_mean") is None:
            from .errors import UserError

            raise UserError(f"budget.max_kld: no KL divergence was measured for protocol {result.protocol.name}; "
                            "use max_ppl_increase_pct, or the gptq-paper protocol")
        return float(fid["kld_mean"])
    raise ValueError(f"unknown quality bound {key}")


def attempt_name(name: str, bits: float) -> str:
    return f"{name}.{bits:.2f}b"


def quality_search(run: RunInputs, variant, quantizer, pkey: str, baseline: EvalResult,
                   step: Callable[..., VariantOutcome]) -> VariantOutcome:
    from .quantize.mixed.predict import Predictor

    key, bound = variant.quality_bound
    attempts: list[Attempt] = []
    outcomes: dict[float, VariantOutcome] = {}
    predictor: Predictor | None = None
    lo, hi = 2.0, 8.0
    while len(attempts) < variant.max_attempts:
        b = next_bits(attempts, bound, lo, hi, tolerance=PREDICT_TOLERANCE,
                      predict=predictor.cost if predictor else None)
        if b is None or b in outcomes:
            break
        v = variant.with_bits(b).model_copy(update={"name": attempt_name(variant.name, b)})
        run.progress.message(f"{variant.name}: attempt {len(attempts) + 1} of at most {variant.max_attempts}: "
                             f"{b:.2f} bits per weight")
        o = step(run, v, quantizer, pkey, baseline)
        outcomes[b] = o
        value = measured(key, o.result, baseline)
        attempts.append(Attempt(b, value))
        run.progress.message(f"{variant.name}: {b:.2f} bits: {key.removeprefix('max_')} {value:.4g} "
                             f"({'meets' if value <= bound else 'misses'} {bound:g})")
        if predictor is None and o.summary.get("details", {}).get("sensitivity"):
            predictor = Predictor.load(o.summary["details"]["sensitivity"], variant)
            lo, hi = predictor.reachable()
    keep, met = chosen(attempts, bound)
    o = outcomes[keep.bits]
    search = {"bound": {key: bound}, "met": met, "kept_bits": keep.bits,
              "attempts": [{"bits": a.bits, "value": a.value, "name": attempt_name(variant.name, a.bits)}
                           for a in attempts]}
    if not met:
        run.progress.message(f"{variant.name}: no attempt met {key} {bound:g}; keeping the largest "
                             f"({keep.bits:.2f} bits, {keep.value:.4g})")
    return replace(o, name=variant.name, summary={**o.summary, "search": search})
