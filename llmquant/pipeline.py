"""run(recipe): load once, build data once, evaluate the baseline, quantize and evaluate each
variant, record the leaderboard and pick the winner. Each finished step is recorded under the
run directory with the content hash of its inputs, so a rerun skips it (steps.py).

The pieces: run_inputs.py (what is built once), run_steps.py (the cached steps), run_report.py
(rows, winner's candidates, files written at the end)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .board import Board
from .errors import UserError
from .eval.evaluate import protocol_for
from .eval.results import EvalResult
from .loading.runtime import pick_device
from .preflight import PreflightReport, check_plan, preflight
from .progress import NULL_PROGRESS, Progress
from .quantize import quantizer_for
from .recipe import Recipe
from .run_inputs import RunInputs, build_calibration, eval_data, load_base
from .run_report import board_rows, candidate, write_reports
from .run_steps import VariantOutcome, baseline_step, variant_step
from .runs import RunDir
from .winner import Decision, pick_winner


@dataclass
class RunSummary:
    run_dir: Path
    model: str
    baseline: EvalResult
    baseline_reused: bool
    variants: list[VariantOutcome]
    decision: Decision
    board_path: Path
    rows: list[dict] = field(default_factory=list)  # the leaderboard rows recorded: baseline first


@contextmanager
def in_recipe(recipe: Recipe) -> Iterator[None]:
    """Prefix user errors with the recipe file, so every message names it."""
    try:
        yield
    except UserError as e:
        msg = str(e)
        prefix = f"{recipe.path}: "
        raise UserError(msg if msg.startswith(prefix) or recipe.path is None else prefix + msg) from None


def run(recipe: Recipe, progress: Progress = NULL_PROGRESS, fresh: bool = False,
        board_path: Path | None = None) -> RunSummary:
    with in_recipe(recipe):
        return _run(recipe, progress, fresh, board_path)


def checked(recipe: Recipe, progress: Progress) -> PreflightReport:
    """Preflight (schema, files, shapes) and, unless LLMQUANT_SKIP_PLAN, the memory plan."""
    report = preflight(recipe)
    if not os.environ.get("LLMQUANT_SKIP_PLAN"):
        check_plan(recipe, report)
    for note in report.notes:
        progress.message(note)
    return report


def _run(recipe: Recipe, progress: Progress, fresh: bool, board_path: Path | None) -> RunSummary:
    report = checked(recipe, progress)
    device = pick_device(recipe.model.device)
    rd = RunDir(recipe.run_dir())
    rd.prepare()
    board = Board(board_path or (recipe.resolve(recipe.output.board) if recipe.output.board else None))

    base = load_base(report.source, recipe, rd, progress)
    data = eval_data(recipe, rd, base, progress)
    calib = build_calibration(recipe, rd, base.tokenizer, base.hash, progress)
    inputs = RunInputs(recipe, rd, device, base, data, calib, progress, fresh)

    pkey = protocol_for(inputs.job_for(base.dir), data.tensors, device).key
    baseline, baseline_reused = baseline_step(inputs, board, pkey)
    outcomes = [variant_step(inputs, v, quantizer_for(v, report.peers), pkey, baseline) for v in recipe.variants]

    rows = board_rows(inputs, baseline, outcomes)
    board.record(rows)
    decision = pick_winner(candidate("baseline", baseline), [candidate(o.name, o.result) for o in outcomes],
                           recipe.select)
    summary = RunSummary(rd.root, base.label, baseline, baseline_reused, outcomes, decision, board.path, rows)
    write_reports(summary, recipe)
    return summary
