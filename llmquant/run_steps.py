"""The steps of an LLM run, each cached by the content hash of its inputs (steps.py): evaluate the
baseline; quantize a variant into its checkpoint; evaluate the checkpoint."""

from __future__ import annotations

import gc
import logging
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import __version__
from .board import Board
from .errors import UserError
from .eval.evaluate import EvalJob, evaluate_checkpoint, evaluate_isolated
from .eval.protocols import get_protocol
from .eval.reference import reference_name
from .eval.results import EvalResult
from .loading.models import load_error, load_hf_model
from .progress import Progress
from .quantize import METHODS, loads_own_model
from .quantize.base import QuantizeContext
from .quantize.measure import measure_step
from .recipe import Recipe
from .run_inputs import RunInputs
from .runs import RunDir, content_hash, file_fingerprint
from .steps import cached_dir, cached_result
from .winner import delta_pct

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


def evaluate(job: EvalJob, recipe: Recipe, rd: RunDir, label: str, progress: Progress) -> EvalResult:
    with progress.task(f"evaluate {label}", total=None):
        if recipe.eval.isolate:
            result = evaluate_isolated(job, rd.logs / f"eval-{label}", progress)
        else:
            result = evaluate_checkpoint(job, progress)
    if not math.isfinite(result.ppl):
        raise UserError(f"{label}: perplexity is {result.ppl} (not finite): the checkpoint has NaN/Inf weights or "
                        f"overflows in {job.dtype}; try model.dtype: float32")
    return result


def report_check(label: str, result: EvalResult, progress: Progress) -> None:
    """Say so when 16-bit compute moved perplexity more than the stated tolerance."""
    c = result.check
    if c and not c["within"]:
        progress.message(f"{label}: {result.protocol.dtype} perplexity differs from float32 by {c['diff_pct']:+.3f} % "
                         f"on the first {c['windows']} windows ({c['ppl_float32']:.4f} in float32), more than "
                         f"{c['tolerance_pct']} %: both are recorded in results.json")


def reference_path(run: RunInputs, pkey: str) -> Path | None:
    """The baseline's fidelity reference in the run's cache (once per model and protocol), or None
    when the protocol does not measure fidelity."""
    if not get_protocol(run.recipe.eval.protocol).fidelity:
        return None
    return run.rd.cache / reference_name(pkey, run.base.hash)


def baseline_step(run: RunInputs, board: Board, pkey: str) -> tuple[EvalResult, bool]:
    """(baseline result, reused): cached by (model, protocol) in the run directory, else taken from
    the leaderboard (a baseline another run measured on the same protocol), else evaluated. The
    evaluation also writes the fidelity reference; while that file is missing, nothing is reused."""
    ref = reference_path(run, pkey)
    job = run.job_for(run.base.dir, ref, write_reference=True)
    key = content_hash({"job": job.key_fields() | {"checkpoint": run.base.hash}, "protocol": pkey})
    redo = run.fresh or (ref is not None and not ref.is_file())
    evaluated: list[bool] = []

    def compute() -> EvalResult:
        stored = None if redo else board.find_baseline(run.base.hash, pkey)
        if stored:
            return EvalResult.from_dict(stored)
        evaluated.append(True)
        return evaluate(job, run.recipe, run.rd, "baseline", run.progress)

    baseline, _ = cached_result(run.rd.baseline_result(), key, compute, fresh=redo, encode=EvalResult.to_dict,
                                decode=EvalResult.from_dict)
    reused = not evaluated
    run.progress.message(f"baseline perplexity {baseline.ppl:.3f}" + (" (reused)" if reused else ""))
    report_check("baseline", baseline, run.progress)
    return baseline, reused


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


def variant_key(run: RunInputs, variant, quantizer) -> str:
    """The content hash of what a variant's checkpoint is made from."""
    needs_calib = run.calib is not None and METHODS[variant.method].needs_calibration
    return content_hash({
        "variant": variant.model_dump(mode="json"), "model": run.base.hash, "method_version": quantizer.version,
        "calibration": run.calib.key if needs_calib else None,
    })


def variant_index(recipe, name: str) -> int:
    """The recipe's index of variant `name`, or of the variant whose search attempt it is
    (`<name>.<bits>b`, run_search.attempt_name)."""
    names = [v.name for v in recipe.variants]
    return names.index(name) if name in names else names.index(name.rsplit(".", 2)[0])


def quantize_variant(run: RunInputs, variant, quantizer, key: str) -> tuple[dict, bool]:
    """(manifest, quantized_now): the variant's checkpoint, reused when its manifest has `key`."""
    recipe, rd, progress = run.recipe, run.rd, run.progress
    ckpt = rd.checkpoint(variant.name)
    work_dir = rd.variant(variant.name) / "work"  # per-block state of an interrupted run

    def build(tmp: Path) -> dict:
        if run.fresh:
            shutil.rmtree(work_dir, ignore_errors=True)
        with progress.task(f"quantize {variant.name} ({variant.method})", total=None), \
                measure_step(run.device) as measured:
            model, blocks = load_for_quantizing(variant, run.base.dir, run.device, recipe.model.trust_remote_code)
            ctx = QuantizeContext(device=run.device, progress=progress, tokenizer=run.base.tokenizer,
                                  work_dir=work_dir, model_dir=run.base.dir, blocks=blocks,
                                  cache_dir=rd.cache, model_key=run.base.hash,
                                  max_shard_bytes=int(recipe.output.shard_size_mb * (1 << 20)),
                                  **activation_settings(recipe))
            with resource_errors(f"variants[{variant_index(recipe, variant.name)}] ({variant.name})", ckpt):
                summary = quantizer.quantize(model, variant, run.calib, tmp, ctx).to_dict()
            del model, blocks
            gc.collect()
        measured.update(peer_peak(summary))
        return {"method": variant.method, "summary": summary, "llmquant": __version__, **measured}

    manifest, quantized_now = cached_dir(ckpt, rd.variant(variant.name) / "manifest.json", key, build,
                                         fresh=run.fresh)
    if quantized_now and not METHODS[variant.method].keeps_work:
        shutil.rmtree(work_dir, ignore_errors=True)  # the checkpoint is final: resume state not needed
    return manifest, quantized_now


def variant_step(run: RunInputs, variant, quantizer, pkey: str, baseline: EvalResult) -> VariantOutcome:
    """Quantize a variant (or reuse its checkpoint), then evaluate it (or reuse its result); a variant
    with a quality bound runs a search of such steps (run_search.py)."""
    if getattr(variant, "quality_bound", None):
        from .run_search import quality_search

        return quality_search(run, variant, quantizer, pkey, baseline, variant_step)
    key = variant_key(run, variant, quantizer)
    manifest, quantized_now = quantize_variant(run, variant, quantizer, key)
    ckpt = run.rd.checkpoint(variant.name)
    ref = reference_path(run, pkey)
    job = run.job_for(ckpt, ref)
    # the reference's content is part of the key: a re-measured baseline re-measures fidelity
    # (only the evaluation: the checkpoint is reused)
    vkey = content_hash({"artifact": key, "protocol": pkey, "job": job.key_fields()}
                        | ({"reference": file_fingerprint(ref)} if ref is not None else {}))
    result, evaluated_now = cached_result(
        run.rd.result(variant.name), vkey, lambda: evaluate(job, run.recipe, run.rd, variant.name, run.progress),
        fresh=run.fresh or quantized_now, encode=EvalResult.to_dict, decode=EvalResult.from_dict)
    run.progress.message(f"{variant.name}: perplexity {result.ppl:.3f} "
                         f"({delta_pct(result.ppl, baseline.ppl):+.2f} %)")
    report_check(variant.name, result, run.progress)
    return VariantOutcome(variant.name, variant.method, ckpt, key, result, quantized_now, evaluated_now,
                          manifest.get("summary", {}), quantize_step(manifest))
