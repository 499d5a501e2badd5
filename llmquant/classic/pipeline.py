"""run_classic(recipe): load the model and the data once, split them, (train a factory model when
the recipe says so), save and validate the baseline, then for each variant quantize → save →
load back → validate through the same code path; record the leaderboard and pick the winner.

Finished steps are recorded under the run directory with the content hash of their inputs, so a
rerun skips them (as the LLM pipeline does).
"""

from __future__ import annotations

import io
import logging
import platform
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .. import __version__
from ..board import Board, Row, render_markdown
from ..cpu import environment
from ..errors import UserError
from ..pipeline import in_recipe
from ..progress import NULL_PROGRESS, Progress
from ..runs import RunDir, atomic_write_json, atomic_write_text, content_hash
from ..steps import cached_dir, cached_file, cached_result
from ..winner import Decision
from .data import Splits, coverage_notes, load_dataset, make_splits
from .export import example_inputs, program_weights_bytes, save_program
from .methods import METHODS, get_method, missing_packages
from .models import SourceModel, load_weights, open_source, read_state_dict
from .onnx_rt import onnx_weights_bytes
from .ptq import ClassicContext
from .recipe import ClassicRecipe
from .results import ClassicProtocol, ClassicResult, classic_row
from .runners import Artifact, open_runner
from .select import ClassicCandidate, pick_classic
from .train import fit
from .validate import VERDICT_RULE, measure, verdict

log = logging.getLogger("llmquant")


@dataclass
class ClassicOutcome:
    name: str
    method: str
    artifact: Artifact
    key: str
    result: ClassicResult
    verdict: str
    summary: dict = field(default_factory=dict)
    quantized_now: bool = False
    evaluated_now: bool = False


@dataclass
class ClassicSummary:
    run_dir: Path
    model: str
    baseline: ClassicResult
    variants: list[ClassicOutcome]
    decision: Decision
    board_path: Path
    rows: list[dict]
    splits: dict


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def run_classic(recipe: ClassicRecipe, progress: Progress = NULL_PROGRESS, fresh: bool = False,
                board_path: Path | None = None) -> ClassicSummary:
    with in_recipe(recipe), torch_threads(recipe.validation.threads) as threads:
        return _run(recipe, progress, fresh, board_path, threads)


def train_source(source: SourceModel, recipe: ClassicRecipe, splits: Splits, rd: RunDir, fresh: bool,
                 progress: Progress) -> None:
    """Train a factory model from scratch on the training split (cached by content hash)."""
    spec = recipe.model.train
    key = content_hash({"factory": recipe.model.factory, "kwargs": recipe.model.kwargs,
                        "train": spec.model_dump(), "data": splits.train.sha256}, 24)
    path = rd.cache / f"trained-{key}.pt"

    def train() -> bytes:
        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            source.module.train()
            losses = fit(source.module, splits.train, spec.epochs, spec.lr, spec.batch_size, spec.seed, progress,
                         label=f"train {source.label} ({len(splits.train)} samples, {spec.epochs} epochs)")
        progress.message(f"trained {source.label}: final loss {losses[-1]:.4f}")
        buf = io.BytesIO()
        torch.save(source.module.state_dict(), buf)
        return buf.getvalue()

    if not cached_file(path, train, fresh=fresh):
        load_weights(source.module, read_state_dict(path), str(path))
    source.module.eval()
    source.hash = key
    source.label = f"{source.label} (trained here)"


def _evaluate(artifact: Artifact, recipe: ClassicRecipe, splits: Splits, protocol: ClassicProtocol,
              threads: int) -> ClassicResult:
    v = recipe.validation
    runner = open_runner(artifact, v.compile, threads, len(splits.validation.inputs))
    m = measure(runner, splits.validation, v.batch_size, v.latency.warmup, v.latency.repeats)
    wbytes = onnx_weights_bytes(artifact.path) if artifact.format == "onnx" else program_weights_bytes(artifact.path)
    env = {"torch": torch.__version__, "llmquant": __version__, "python": platform.python_version(),
           "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           **environment()}
    return ClassicResult("accuracy", m.accuracy, m.n, m.nonfinite, m.latency_ms_median, m.latency_ms_p90,
                         m.throughput, m.throughput_batch, artifact.size_bytes, wbytes, artifact.format, protocol,
                         m.seconds, env)


def _baseline_artifact(source: SourceModel, splits: Splits, rd: RunDir, fresh: bool) -> tuple[Artifact, str]:
    if source.onnx_path is not None:
        return Artifact(source.onnx_path, "onnx"), source.hash
    key = content_hash({"baseline": source.hash, "llmquant": __version__})
    d = rd.root / "baseline" / "artifact"

    def build(tmp: Path) -> dict:
        save_program(source.module, example_inputs(splits.calibration.inputs), tmp / "model.pt2")
        return {}

    cached_dir(d, rd.root / "baseline" / "manifest.json", key, build, fresh=fresh,
               ready=lambda p: (p / "model.pt2").is_file())
    return Artifact(d / "model.pt2", "pt2"), key


def _run(recipe: ClassicRecipe, progress: Progress, fresh: bool, board_path: Path | None,
         threads: int) -> ClassicSummary:
    extra = ("torchao",) + (("sklearn",) if recipe.data.source == "builtin:digits" else ()) + \
        (("onnxruntime",) if recipe.model.onnx else ())
    missing = missing_packages([v.method for v in recipe.variants], extra)
    if missing:
        raise UserError(f"this recipe needs {', '.join(missing)}: pip install 'llmquant[classic]'")
    rd = RunDir(recipe.run_dir())
    rd.prepare()
    board = Board(board_path or (recipe.resolve(recipe.output.board) if recipe.output.board else None))

    with progress.task("load model", total=None):
        source = open_source(recipe.model, recipe.base_dir)
    with progress.task("load data", total=None):
        ds = load_dataset(recipe.data, recipe.base_dir, source.tokenizer, source.label2id)
        splits = make_splits(ds, recipe.data.validation, recipe.data.calibration, recipe.data.seed)
    for note in coverage_notes(splits.report):
        progress.message(note)
    if recipe.model.train:
        train_source(source, recipe, splits, rd, fresh, progress)

    v = recipe.validation
    protocol = ClassicProtocol(
        name="classic-accuracy", dataset=ds.label, validation_sha256=splits.validation.sha256,
        validation_n=len(splits.validation), metric="accuracy", batch=v.batch_size,
        latency=f"batch 1, median/p90 of {v.latency.repeats} after {v.latency.warmup} warm-up",
        runtime="torch.compile (inductor, freezing)" if v.compile else "eager", threads=threads, device="cpu")

    # -- baseline ------------------------------------------------------------------------------
    base_art, base_key = _baseline_artifact(source, splits, rd, fresh)
    eval_key = content_hash({"artifact": base_key, "protocol": protocol.key})

    def validate_baseline() -> ClassicResult:
        with progress.task("validate baseline", total=None):
            return _evaluate(base_art, recipe, splits, protocol, threads)

    baseline, _ = cached_result(rd.baseline_result(), eval_key, validate_baseline, fresh=fresh,
                                encode=ClassicResult.to_dict, decode=ClassicResult.from_dict)
    progress.message(f"baseline: accuracy {baseline.metric:.2f} %" + (
        f", batch-1 latency {baseline.latency_ms_median:.3f} ms" if baseline.latency_ms_median else ""))

    # -- variants ------------------------------------------------------------------------------
    outcomes: list[ClassicOutcome] = []
    for var in recipe.variants:
        key = content_hash({"variant": var.model_dump(mode="json"), "model": source.hash, "data": splits.key,
                            "impl": METHODS[var.method].impl, "llmquant": __version__})
        art_dir = rd.variant(var.name) / "artifact"

        def build(tmp: Path, var=var) -> dict:
            ctx = ClassicContext(work_dir=rd.variant(var.name) / "work", progress=progress)
            with progress.task(f"quantize {var.name} ({var.method})", total=None):
                summary = get_method(var.method)(source, var, splits, tmp, ctx)
            return {"method": var.method, "summary": summary, "llmquant": __version__}

        manifest, quantized_now = cached_dir(art_dir, rd.variant(var.name) / "manifest.json", key, build, fresh=fresh)
        summary = manifest["summary"]
        if quantized_now:
            for note in summary.get("notes", []):
                progress.message(f"{var.name}: {note}")
        artifact = Artifact(art_dir / summary["artifact"], summary["format"])
        vkey = content_hash({"artifact": key, "protocol": protocol.key})

        def validate(var=var, artifact=artifact) -> ClassicResult:
            with progress.task(f"validate {var.name}", total=None):
                return _evaluate(artifact, recipe, splits, protocol, threads)

        result, evaluated_now = cached_result(rd.result(var.name), vkey, validate, fresh=fresh or quantized_now,
                                              encode=ClassicResult.to_dict, decode=ClassicResult.from_dict)
        verdict_ = verdict(baseline.metric - result.metric, result.nonfinite)
        progress.message(_line(var.name, result, baseline, verdict_))
        outcomes.append(ClassicOutcome(var.name, var.method, artifact, key, result, verdict_, summary,
                                       quantized_now, evaluated_now))

    # -- leaderboard and winner ----------------------------------------------------------------
    common = dict(run=recipe.run_name, run_dir=str(rd.root.resolve()), model=source.label, model_hash=source.hash,
                  baseline=baseline)
    rows = [classic_row(**common, variant="baseline", method="none", bits=None, is_baseline=True, result=baseline,
                        verdict="baseline", artifact=str(base_art.path), artifact_hash=base_key)]
    rows += [classic_row(**common, variant=o.name, method=o.method, bits=METHODS[o.method].bits, is_baseline=False,
                         result=o.result, verdict=o.verdict, artifact=str(o.artifact.path), artifact_hash=o.key)
             for o in outcomes]
    board.record(rows)
    decision = pick_classic(baseline.metric, baseline.latency_ms_median, [
        ClassicCandidate(o.name, o.result.metric, o.result.size_bytes, o.result.latency_ms_median, o.result.nonfinite)
        for o in outcomes], recipe.select)
    out = ClassicSummary(rd.root, source.label, baseline, outcomes, decision, board.path, rows, splits.report)
    write_reports(out, recipe)
    return out


def _line(name: str, r: ClassicResult, base: ClassicResult, verdict_: str) -> str:
    lat = f", batch-1 {r.latency_ms_median:.3f} ms" if r.latency_ms_median else ""
    if r.latency_ms_median and base.latency_ms_median:
        lat += f" ({base.latency_ms_median / r.latency_ms_median:.2f}x)"
    return (f"{name}: accuracy {r.metric:.2f} % ({r.metric - base.metric:+.2f} pts, {verdict_}){lat}, "
            f"{r.size_bytes / 1e6:.3f} MB on disk")


def write_reports(summary: ClassicSummary, recipe: ClassicRecipe) -> None:
    md = render_markdown([Row(r) for r in summary.rows], title=f"{recipe.run_name} — leaderboard")
    md += f"\nVerdict rule: {VERDICT_RULE}.\n\n**Winner**: {summary.decision.winner or 'none'} — "
    md += f"{summary.decision.reason}\n"
    atomic_write_text(summary.run_dir / "leaderboard.md", md)
    base = summary.baseline
    atomic_write_json(summary.run_dir / "results.json", {
        "kind": "classic",
        "recipe": str(recipe.path) if recipe.path else None,
        "model": summary.model,
        "splits": summary.splits,
        "baseline": {"artifact": summary.rows[0]["artifact"], "result": base.to_dict()},
        "variants": [{"name": o.name, "method": o.method, "artifact": str(o.artifact.path), "key": o.key,
                      "result": o.result.to_dict(), "loss_pts": base.metric - o.result.metric,
                      "verdict": o.verdict, "quantize": o.summary} for o in summary.variants],
        "winner": {"name": summary.decision.winner, "reason": summary.decision.reason},
        "select": recipe.select.model_dump(),
        "verdict_rule": VERDICT_RULE,
        "llmquant": __version__,
    })
