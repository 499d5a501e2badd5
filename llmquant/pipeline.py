"""run(recipe): load once, build data once, evaluate the baseline, quantize and evaluate each
variant, record the leaderboard and pick the winner. Each finished step is recorded under the
run directory with the content hash of its inputs, so a rerun skips it."""

from __future__ import annotations

import gc
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from . import __version__
from .board import Board, Row, render_markdown, result_row
from .data import calibration_crops, cached_tokens, check_eval_length, load_corpus
from .errors import UserError
from .eval.evaluate import EvalJob, evaluate_checkpoint, evaluate_isolated, protocol_for
from .eval.protocols import eval_tensors, tensors_sha256
from .eval.results import EvalResult
from .loading import fingerprint, load_error, load_hf_model, load_tokenizer, materialize_base, pick_device, resolve_dtype
from .preflight import check_plan, preflight
from .progress import NULL_PROGRESS, Progress
from .quantize import loads_own_model, quantizer_for
from .quantize import METHODS
from .quantize.base import CalibrationSet, QuantizeContext
from .quantize.measure import measure_step
from .recipe import Recipe
from .runs import RunDir, atomic_dir, atomic_write_json, atomic_write_text, content_hash, read_json
from .winner import Candidate, Decision, delta_pct, pick_winner

log = logging.getLogger("llmquant")


@dataclass
class VariantOutcome:
    name: str
    method: str
    checkpoint: Path
    key: str
    result: EvalResult
    quantized_now: bool
    evaluated_now: bool
    summary: dict = field(default_factory=dict)
    step: dict = field(default_factory=dict)  # quantize_seconds, quantize_peak_rss_bytes, ... (manifest)


@dataclass
class RunSummary:
    run_dir: Path
    model: str
    baseline: EvalResult
    baseline_reused: bool
    variants: list[VariantOutcome]
    decision: Decision
    board_path: Path


@contextmanager
def in_recipe(recipe: Recipe) -> Iterator[None]:
    """Prefix user errors with the recipe file, so every message names it."""
    try:
        yield
    except UserError as e:
        msg = str(e)
        prefix = f"{recipe.path}: "
        raise UserError(msg if msg.startswith(prefix) or recipe.path is None else prefix + msg) from None


def _evaluate(job: EvalJob, recipe: Recipe, rd: RunDir, label: str, progress: Progress) -> EvalResult:
    import math

    with progress.task(f"evaluate {label}", total=None):
        if recipe.eval.isolate:
            result = evaluate_isolated(job, rd.logs / f"eval-{label}", progress)
        else:
            result = evaluate_checkpoint(job, progress)
    if not math.isfinite(result.ppl):
        raise UserError(f"{label}: perplexity is {result.ppl} (not finite): the checkpoint has NaN/Inf weights or "
                        f"overflows in {job.dtype}; try model.dtype: float32")
    return result


def check_finite_weights(model_dir: Path, cache: Path, model_hash: str) -> None:
    """NaN/Inf in weights would be quantized and evaluated into garbage: stop, naming the tensor.
    Scans the safetensors files once per model (memory-mapped); the verdict is cached."""
    import torch
    from safetensors import safe_open

    marker = cache / f"finite-{model_hash}.json"
    if read_json(marker) == {"finite": True}:
        return
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as h:
                for name in h.keys():
                    t = h.get_tensor(name)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        raise UserError(f"{model_dir}: weight {name} contains NaN or Inf; fix the model before "
                                        "quantizing it")
        except UserError:
            raise
        except Exception as e:
            err = load_error(f, e)
            if err is None:
                raise
            raise err from None
    atomic_write_json(marker, {"finite": True})


@contextmanager
def resource_errors(what: str, target: Path) -> Iterator[None]:
    """Out of memory and disk full become one-line user errors (nothing half-written is kept:
    the checkpoint is written in a temporary directory that atomic_dir removes)."""
    import errno

    import torch

    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise UserError(f"{what}: out of memory while quantizing ({type(e).__name__}); use fewer "
                        "calibration.n_samples or a shorter calibration.seqlen, or a machine with more memory") from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise UserError(f"{what}: out of memory while quantizing; use fewer calibration.n_samples or a "
                            "shorter calibration.seqlen") from None
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{what}: disk full while writing {target} (nothing was kept); free space and rerun: "
                            "finished steps are reused") from None
        raise


def report_check(label: str, result: EvalResult, progress: Progress) -> None:
    """Say so when 16-bit compute moved perplexity more than the stated tolerance."""
    c = result.check
    if c and not c["within"]:
        progress.message(f"{label}: {result.protocol.dtype} perplexity differs from float32 by {c['diff_pct']:+.3f} % "
                         f"on the first {c['windows']} windows ({c['ppl_float32']:.4f} in float32), more than "
                         f"{c['tolerance_pct']} %: both are recorded in results.json")


def latency_job(recipe: Recipe) -> dict | None:
    """The latency set-up an EvalJob carries; with `via: server`, also the serve engine's settings."""
    lat = recipe.eval.latency
    if not lat.enabled:
        return None
    if lat.via == "in_process":
        return lat.model_dump(exclude={"via"})  # as before `via` existed: cached results stay valid
    return lat.model_dump() | {"serve": recipe.serve.model_dump(mode="json", include={"engine", "local", "vllm"})}


def build_calibration(recipe: Recipe, rd: RunDir, tokenizer, model_hash: str, progress: Progress) -> CalibrationSet | None:
    spec = recipe.calibration
    if spec is None or not any(METHODS[v.method].needs_calibration for v in recipe.variants):
        return None
    with progress.task("calibration data", total=None):
        corpus = load_corpus(spec.dataset, recipe.base_dir, "calibration.dataset")
        ids = cached_tokens(rd.cache, {"model": model_hash, "corpus": corpus.sha256}, tokenizer, corpus.text)
        crops = calibration_crops(ids, spec.n_samples, spec.seqlen, spec.seed, corpus.label)
    identity = {"model": model_hash, "corpus": corpus.sha256, "n": spec.n_samples, "seqlen": spec.seqlen,
                "seed": spec.seed}
    if spec.activation_dtype != "float32":  # changes the results (float32, the default, keeps old keys)
        identity["activation_dtype"] = spec.activation_dtype
    key = content_hash(identity)
    return CalibrationSet(crops, key)


def load_for_quantizing(variant, base_dir: Path, device: str, trust_remote_code: bool):
    """(model, blocks) for a variant's quantizer: None for methods that load the model themselves;
    a skeleton whose blocks are read from the safetensors files one at a time when there are
    such files (quantize/lazy.py); else the whole model in float32 on `device`."""
    if loads_own_model(variant):
        return None, None
    if any(Path(base_dir).glob("*.safetensors")):
        from .quantize.lazy import lazy_model, missing_tensors

        try:
            model, blocks = lazy_model(base_dir, trust_remote_code)
        except UserError:
            raise
        except Exception as e:
            err = load_error(base_dir, e)
            if err is None:
                raise
            raise err from None
        missing = missing_tensors(model, blocks)
        if not missing:
            return model, blocks
        log.warning("%s: tensor names differ from the model's (e.g. %s is not in the files): loading the whole "
                    "model to quantize it (memory grows with its size)", base_dir, missing[0])
    return load_hf_model(base_dir, "float32", device, trust_remote_code), None


def activation_settings(recipe: Recipe) -> dict:
    """QuantizeContext's activation budget and dtype from the recipe's calibration section."""
    import torch

    spec = recipe.calibration
    if spec is None:
        return {}
    return {"activation_budget_bytes": spec.activation_budget_mb << 20,
            "activation_dtype": None if spec.activation_dtype == "float32" else getattr(torch, spec.activation_dtype)}


STEP_KEYS = ("quantize_seconds", "quantize_peak_rss_bytes", "quantize_peak_rss_scope", "quantize_peak_device_bytes")


def quantize_step(manifest: dict) -> dict:
    """The quantize step's measurements recorded in a variant's manifest (absent: an older run)."""
    return {k: manifest[k] for k in STEP_KEYS if k in manifest}


def peer_peak(summary: dict) -> dict:
    """A peer tool quantizes in its own worker process: its peak is the step's."""
    peak = (summary.get("peer") or {}).get("peak_rss_bytes")
    return {"quantize_peak_rss_bytes": peak, "quantize_peak_rss_scope": "peer worker"} if peak else {}


def run(recipe: Recipe, progress: Progress = NULL_PROGRESS, fresh: bool = False,
        board_path: Path | None = None) -> RunSummary:
    with in_recipe(recipe):
        return _run(recipe, progress, fresh, board_path)


def _run(recipe: Recipe, progress: Progress, fresh: bool, board_path: Path | None) -> RunSummary:
    report = preflight(recipe)
    if not os.environ.get("LLMQUANT_SKIP_PLAN"):
        check_plan(recipe, report)
    for note in report.notes:
        progress.message(note)
    src = report.source
    device = pick_device(recipe.model.device)
    rd = RunDir(recipe.run_dir())
    rd.prepare()
    board = Board(board_path or (recipe.resolve(recipe.output.board) if recipe.output.board else None))

    with progress.task(f"load {src.label}", total=None):
        base_dir = materialize_base(src, rd.base_model)
        model_hash = fingerprint(src)
        tokenizer = load_tokenizer(base_dir, recipe.model.trust_remote_code)
        check_finite_weights(base_dir, rd.cache, model_hash)

    ev = recipe.eval
    with progress.task("eval data", total=None):
        corpus = load_corpus(ev.dataset, recipe.base_dir, "eval.dataset")
        ids = cached_tokens(rd.cache, {"model": model_hash, "corpus": corpus.sha256}, tokenizer, corpus.text)
        if ev.protocol == "gptq-paper":
            check_eval_length(ids, ev.seqlen, corpus.label)
        tensors = eval_tensors(ev.protocol, tokenizer, corpus.text, ids)
        tokens_path = rd.cache / "eval-tokens.safetensors"
        if not tokens_path.exists() or read_json(rd.cache / "eval-tokens.json") != {"sha": tensors_sha256(tensors)}:
            from safetensors.torch import save

            from .runs import atomic_write_bytes

            atomic_write_bytes(tokens_path, save({k: v.contiguous() for k, v in tensors.items()}))
            atomic_write_json(rd.cache / "eval-tokens.json", {"sha": tensors_sha256(tensors)})
    calib = build_calibration(recipe, rd, tokenizer, model_hash, progress)

    def job_for(checkpoint: Path) -> EvalJob:
        return EvalJob(
            checkpoint=str(checkpoint), tokens_path=str(tokens_path), corpus=corpus.label,
            corpus_sha256=corpus.sha256, seqlen=ev.seqlen, max_windows=ev.max_windows,
            batch_size=ev.batch_size, dtype=resolve_dtype(recipe.model.dtype, device), device=device,
            check_windows=ev.check_windows, check_tolerance_pct=ev.check_tolerance_pct,
            latency=latency_job(recipe),
            trust_remote_code=recipe.model.trust_remote_code, protocol=ev.protocol, compile_kernels=ev.compile,
        )

    # -- baseline, cached by (model, protocol) -----------------------------------------------
    base_job = job_for(base_dir)
    pkey = protocol_for(base_job, tensors, device).key
    eval_key = content_hash({"job": asdict(base_job) | {"checkpoint": model_hash}, "protocol": pkey})
    cached = read_json(rd.baseline_result())
    stored = None if fresh else board.find_baseline(model_hash, pkey)
    baseline_reused = True
    if not fresh and cached and cached.get("key") == eval_key:
        baseline = EvalResult.from_dict(cached["result"])
    elif stored:
        baseline = EvalResult.from_dict(stored)
        atomic_write_json(rd.baseline_result(), {"key": eval_key, "result": baseline.to_dict()})
    else:
        baseline = _evaluate(base_job, recipe, rd, "baseline", progress)
        baseline_reused = False
        atomic_write_json(rd.baseline_result(), {"key": eval_key, "result": baseline.to_dict()})
    progress.message(f"baseline perplexity {baseline.ppl:.3f}" + (" (reused)" if baseline_reused else ""))
    report_check("baseline", baseline, progress)

    # -- variants ----------------------------------------------------------------------------
    outcomes: list[VariantOutcome] = []
    for v in recipe.variants:
        quantizer = quantizer_for(v, report.peers)
        key = content_hash({
            "variant": v.model_dump(mode="json"), "model": model_hash, "method_version": quantizer.version,
            "calibration": calib.key if (calib and METHODS[v.method].needs_calibration) else None,
        })
        ckpt = rd.checkpoint(v.name)
        manifest_path = rd.variant(v.name) / "manifest.json"
        manifest = read_json(manifest_path)
        quantized_now = False
        if fresh or not manifest or manifest.get("key") != key or not ckpt.is_dir():
            manifest_path.unlink(missing_ok=True)
            work_dir = rd.variant(v.name) / "work"  # per-block state of an interrupted run
            if fresh:
                shutil.rmtree(work_dir, ignore_errors=True)
            with progress.task(f"quantize {v.name} ({v.method})", total=None), measure_step(device) as measured:
                model, blocks = load_for_quantizing(v, base_dir, device, recipe.model.trust_remote_code)
                ctx = QuantizeContext(device=device, progress=progress, tokenizer=tokenizer,
                                      work_dir=work_dir, model_dir=base_dir, blocks=blocks,
                                      max_shard_bytes=int(recipe.output.shard_size_mb * (1 << 20)),
                                      **activation_settings(recipe))
                with resource_errors(f"variants[{recipe.variants.index(v)}] ({v.name})", ckpt):
                    with atomic_dir(ckpt) as tmp:
                        summary = quantizer.quantize(model, v, calib, tmp, ctx).to_dict()
                del model, blocks
                gc.collect()
            measured.update(peer_peak(summary))
            manifest = {"key": key, "method": v.method, "summary": summary, "llmquant": __version__, **measured}
            atomic_write_json(manifest_path, manifest)
            if not METHODS[v.method].keeps_work:
                shutil.rmtree(work_dir, ignore_errors=True)  # the checkpoint is final: resume state not needed
            quantized_now = True
        vjob = job_for(ckpt)
        vkey = content_hash({"artifact": key, "protocol": pkey, "job": asdict(vjob)})
        cached = read_json(rd.result(v.name))
        if not fresh and not quantized_now and cached and cached.get("key") == vkey:
            result, evaluated_now = EvalResult.from_dict(cached["result"]), False
        else:
            result, evaluated_now = _evaluate(vjob, recipe, rd, v.name, progress), True
            atomic_write_json(rd.result(v.name), {"key": vkey, "result": result.to_dict()})
        progress.message(f"{v.name}: perplexity {result.ppl:.3f} ({delta_pct(result.ppl, baseline.ppl):+.2f} %)")
        report_check(v.name, result, progress)
        outcomes.append(VariantOutcome(v.name, v.method, ckpt, key, result, quantized_now, evaluated_now,
                                       manifest.get("summary", {}), quantize_step(manifest)))

    # -- leaderboard and winner --------------------------------------------------------------
    common = dict(run=recipe.run_name, run_dir=str(rd.root.resolve()), model=src.label, model_hash=model_hash,
                  baseline_ppl=baseline.ppl)
    rows = [result_row(**common, variant="baseline", method="none", bits=None, group_size=None, fmt="hf",
                       is_baseline=True, result=baseline, artifact=str(base_dir), artifact_hash=model_hash)]
    for o, v in zip(outcomes, recipe.variants):
        rows.append(result_row(**common, variant=o.name, method=o.method, bits=getattr(v, "bits", None),
                               group_size=getattr(v, "group_size", None), fmt=o.summary.get("format", "?"),
                               is_baseline=False, result=o.result, artifact=str(o.checkpoint), artifact_hash=o.key,
                               backend=o.summary.get("backend"), quantize=o.step))
    board.record(rows)
    decision = pick_winner(candidate("baseline", baseline), [candidate(o.name, o.result) for o in outcomes],
                           recipe.select)
    summary = RunSummary(rd.root, src.label, baseline, baseline_reused, outcomes, decision, board.path)
    write_reports(summary, rows, recipe)
    return summary


def candidate(name: str, result: EvalResult) -> Candidate:
    lat = result.latency
    return Candidate(name, result.size_bytes, result.ppl, lat.ttft_ms_median if lat else None,
                     lat.decode_tok_s if lat else None)


def write_reports(summary: RunSummary, rows: list[dict], recipe: Recipe) -> None:
    md = render_markdown([Row(r) for r in rows], title=f"{recipe.run_name} — leaderboard")
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
    write_html(summary.run_dir / "report.html", run_report(results, summary.run_dir, title, rows))
