"""What an LLM run builds once before its steps: the base model (materialized, fingerprinted,
checked), the tokenizer, the evaluation tokens and the calibration crops; and the EvalJob of a
checkpoint under the recipe's protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Corpus, calibration_crops, cached_tokens, check_eval_length, load_corpus
from .errors import UserError
from .eval.evaluate import EvalJob
from .eval.protocols import Tensors, eval_tensors, tensors_bytes, tensors_sha256
from .loading.models import load_error, load_tokenizer
from .loading.runtime import resolve_dtype
from .loading.sources import fingerprint, materialize_base
from .progress import Progress
from .quantize import METHODS
from .quantize.base import CalibrationSet
from .recipe import Recipe
from .runs import RunDir, atomic_write_json, content_hash, read_json
from .steps import cached_file


@dataclass(frozen=True)
class Base:
    """The unquantized model as a plain HF directory, its content hash, its tokenizer."""

    label: str
    dir: Path
    hash: str
    tokenizer: Any


@dataclass(frozen=True)
class EvalData:
    corpus: Corpus
    tensors: Tensors
    tokens_path: Path  # safetensors file of `tensors`, read by every evaluation (in-process or a worker)


@dataclass(frozen=True)
class RunInputs:
    """Everything a run's steps read: built once, passed to each step."""

    recipe: Recipe
    rd: RunDir
    device: str
    base: Base
    eval: EvalData
    calib: CalibrationSet | None
    progress: Progress
    fresh: bool

    def job_for(self, checkpoint: Path, reference: Path | None = None, write_reference: bool = False) -> EvalJob:
        """The EvalJob of a checkpoint; `reference`: the baseline's fidelity reference, written by this
        job (`write_reference`: the baseline's) or read by it (a variant's)."""
        ev, model = self.recipe.eval, self.recipe.model
        return EvalJob(
            checkpoint=str(checkpoint), tokens_path=str(self.eval.tokens_path), corpus=self.eval.corpus.label,
            corpus_sha256=self.eval.corpus.sha256, seqlen=ev.seqlen, max_windows=ev.max_windows,
            batch_size=ev.batch_size, dtype=resolve_dtype(model.dtype, self.device), device=self.device,
            check_windows=ev.check_windows, check_tolerance_pct=ev.check_tolerance_pct,
            latency=latency_job(self.recipe),
            trust_remote_code=model.trust_remote_code, protocol=ev.protocol, compile_kernels=ev.compile,
            fidelity_reference=str(reference) if reference else None,
            write_reference=bool(reference) and write_reference,
        )


def latency_job(recipe: Recipe) -> dict | None:
    """The latency set-up an EvalJob carries; with `via: server`, also the serve engine's settings."""
    lat = recipe.eval.latency
    if not lat.enabled:
        return None
    if lat.via == "in_process":
        return lat.model_dump(exclude={"via"})  # as before `via` existed: cached results stay valid
    return lat.model_dump() | {"serve": recipe.serve.model_dump(mode="json", include={"engine", "local", "vllm"})}


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


def load_base(src, recipe: Recipe, rd: RunDir, progress: Progress) -> Base:
    with progress.task(f"load {src.label}", total=None):
        base_dir = materialize_base(src, rd.base_model)
        model_hash = fingerprint(src)
        tokenizer = load_tokenizer(base_dir, recipe.model.trust_remote_code)
        check_finite_weights(base_dir, rd.cache, model_hash)
    return Base(src.label, base_dir, model_hash, tokenizer)


def eval_data(recipe: Recipe, rd: RunDir, base: Base, progress: Progress) -> EvalData:
    """The eval corpus tokenised under the recipe's protocol, written once to the run's cache."""
    ev = recipe.eval
    with progress.task("eval data", total=None):
        corpus = load_corpus(ev.dataset, recipe.base_dir, "eval.dataset")
        ids = cached_tokens(rd.cache, {"model": base.hash, "corpus": corpus.sha256}, base.tokenizer, corpus.text)
        if ev.protocol == "gptq-paper":
            check_eval_length(ids, ev.seqlen, corpus.label)
        tensors = eval_tensors(ev.protocol, base.tokenizer, corpus.text, ids)
        tokens_path = rd.cache / "eval-tokens.safetensors"
        cached_file(tokens_path, lambda: tensors_bytes(tensors), key=tensors_sha256(tensors),
                    record=rd.cache / "eval-tokens.json")
    return EvalData(corpus, tensors, tokens_path)


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
