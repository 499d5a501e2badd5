"""The end of an LLM run: its leaderboard rows, the winner's candidates, and the files written
into the run directory (leaderboard.md, results.json, report.html)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import __version__
from .board import Row, render_markdown, result_row
from .eval.results import EvalResult
from .recipe import Recipe
from .run_inputs import RunInputs
from .run_steps import VariantOutcome
from .runs import atomic_write_json, atomic_write_text
from .winner import Candidate

if TYPE_CHECKING:
    from .pipeline import RunSummary


def board_rows(run: RunInputs, baseline: EvalResult, outcomes: list[VariantOutcome]) -> list[dict]:
    """One leaderboard row for the baseline, then one per variant, in the recipe's order."""
    recipe, base = run.recipe, run.base
    common = dict(run=recipe.run_name, run_dir=str(run.rd.root.resolve()), model=base.label, model_hash=base.hash,
                  baseline_ppl=baseline.ppl)
    rows = [result_row(**common, variant="baseline", method="none", bits=None, group_size=None, fmt="hf",
                       is_baseline=True, result=baseline, artifact=str(base.dir), artifact_hash=base.hash)]
    for o, v in zip(outcomes, recipe.variants):
        bits = getattr(v, "bits", None)
        if bits is None and o.summary.get("allocation"):  # per-layer bits: the average allocated
            bits = round(o.summary["allocation"]["average_bits"], 2)
        rows.append(result_row(**common, variant=o.name, method=o.method, bits=bits,
                               group_size=getattr(v, "group_size", None), fmt=o.summary.get("format", "?"),
                               is_baseline=False, result=o.result, artifact=str(o.checkpoint), artifact_hash=o.key,
                               backend=o.summary.get("backend"), quantize=o.step))
    return rows


def candidate(name: str, result: EvalResult) -> Candidate:
    lat, fid = result.latency, result.fidelity or {}
    return Candidate(name, result.size_bytes, result.ppl, lat.ttft_ms_median if lat else None,
                     lat.decode_tok_s if lat else None, fid.get("kld_mean"), fid.get("top1"))


def write_reports(summary: "RunSummary", recipe: Recipe) -> None:
    md = render_markdown([Row(r) for r in summary.rows], title=f"{recipe.run_name} — leaderboard")
    md += f"\n**Winner**: {summary.decision.winner or 'none'} — {summary.decision.reason}\n"
    md += "".join(f"\n**Warning**: {w}\n" for w in summary.decision.warnings)
    atomic_write_text(summary.run_dir / "leaderboard.md", md)
    results = {
        "recipe": str(recipe.path) if recipe.path else None,
        "model": summary.model,
        "baseline": summary.baseline.to_dict(),
        "variants": [{"name": o.name, "method": o.method, "checkpoint": str(o.checkpoint), "key": o.key,
                      "result": o.result.to_dict(), "quantize": o.summary, "quantize_step": o.step}
                     for o in summary.variants],
        "winner": {"name": summary.decision.winner, "reason": summary.decision.reason,
                   "warnings": list(summary.decision.warnings)},
        "select": recipe.select.model_dump(),
        "llmquant": __version__,
    }
    atomic_write_json(summary.run_dir / "results.json", results)
    from .report import run_report, write_html

    title = f"{recipe.run_name} — leaderboard"
    write_html(summary.run_dir / "report.html", run_report(results, summary.run_dir, title, summary.rows))
