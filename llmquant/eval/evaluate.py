"""The one code path that evaluates a checkpoint: load it, perplexity, latency, sizes, memory.

A baseline directory, our packed variants and a user's foreign checkpoint all go through
`evaluate_checkpoint`. `evaluate_isolated` runs it in a fresh process so that the peak
memory recorded belongs to that checkpoint alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import __version__
from ..cpu import environment
from ..errors import UserError
from ..loading.runtime import DTYPES, pick_device, set_threads
from ..progress import NULL_PROGRESS, Progress
from ..runs import read_json
from ..worker_io import run_relayed
from .latency import measure_latency, prompts_from_stream
from .protocols import Tensors, get_protocol, score, tensors_sha256
from .upcast import float32_compute, stored_dtype
from .results import EvalResult, Protocol


@dataclass(frozen=True)
class EvalJob:
    checkpoint: str
    tokens_path: str  # safetensors file: "input_ids" [1, N] and what the protocol's `prepare` adds
    corpus: str
    corpus_sha256: str
    seqlen: int
    max_windows: int | None = None
    batch_size: int = 1
    dtype: str = "float32"  # the compute dtype, already resolved (never "auto")
    device: str = "auto"
    check_windows: int = 0  # when computing in 16 bits on a CPU: windows also scored in float32
    check_tolerance_pct: float = 0.1
    latency: dict | None = None  # LatencySpec fields, or None to skip
    trust_remote_code: bool = False
    protocol: str = "gptq-paper"  # a name in eval/protocols.py PROTOCOLS
    compile_kernels: bool = False  # fuse packed layers' dequantization (bit-identical; see formats/kernels.py)
    # the baseline's fidelity reference (eval/reference.py): written by the baseline's evaluation
    # (write_reference), read by a variant's to measure KL divergence and top-1 agreement
    fidelity_reference: str | None = None
    write_reference: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def key_fields(self) -> dict:
        """The job's fields for cache keys; the fidelity fields only when set, so jobs without them
        (other protocols, older runs) keep their keys."""
        d = asdict(self)
        for k in ("fidelity_reference", "write_reference"):
            if not d[k]:
                d.pop(k)
        return d


def tokens_sha256(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def latency_setup(latency: dict | None) -> str:
    """A short description of the latency set-up, part of the protocol."""
    if latency is None:
        return "none"
    prompts = f"{len(latency['prompts'])} given prompts" if latency.get("prompts") else f"prompt {latency.get('prompt_tokens', 128)}"
    via = ""
    if latency.get("via") == "server":
        from ..serve.engine import resolve_engine

        via = f", over HTTP ({resolve_engine((latency.get('serve') or {}).get('engine', 'auto'))} engine)"
    return (f"{prompts}, decode {latency.get('decode_tokens', 32)}, {latency.get('repeats', 5)} runs "
            f"after {latency.get('warmup', 1)} warm-up, batch 1{via}")


def protocol_for(job: EvalJob, tokens: torch.Tensor | Tensors, device: str) -> Protocol:
    """The protocol a job will be measured under (known before it runs: used as a cache key).
    `tokens` is the token file's tensors (a bare stream is the paper protocol's file)."""
    t = tokens if isinstance(tokens, dict) else {"input_ids": tokens}
    try:
        plan = get_protocol(job.protocol).plan(t, job.seqlen, job.max_windows)
    except ValueError as e:
        raise UserError(f"eval: {job.corpus}: {e} (protocol {job.protocol}, seqlen {job.seqlen}); "
                        "use a longer corpus or a smaller seqlen") from None
    return Protocol(name=job.protocol, corpus=job.corpus, corpus_sha256=job.corpus_sha256,
                    tokens_sha256=tensors_sha256(t), seqlen=job.seqlen, windows=plan.windows,
                    tokens_scored=plan.tokens_scored, dtype=job.dtype, device=device,
                    latency=latency_setup(job.latency), documents=plan.documents, words=plan.words)


def fidelity_observer(job: EvalJob, protocol: Protocol):
    """The observer of the scored logits: the baseline's reference writer, a variant's fidelity
    comparer, or None (no reference, or a protocol without fidelity)."""
    from .reference import FidelityObserver, ReferenceWriter

    if not job.fidelity_reference or not get_protocol(job.protocol).fidelity:
        return None
    if job.write_reference:
        return ReferenceWriter(job.seqlen)
    return FidelityObserver(Path(job.fidelity_reference), job.seqlen, protocol.tokens_scored)


def peak_rss_bytes() -> int:
    # Linux: VmHWM is this process image's own peak. ru_maxrss is not: it survives execve, so a
    # worker started from a big parent reports the parent's resident size at fork time.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def resident_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def latency_prompts(job: EvalJob, ids: torch.Tensor, tokenizer) -> list[torch.Tensor]:
    lat = job.latency or {}
    n = lat.get("repeats", 5)
    if lat.get("prompts"):
        return [tokenizer(p, return_tensors="pt").input_ids for p in lat["prompts"]]
    return prompts_from_stream(ids, n, lat.get("prompt_tokens", 128))


def cast_model(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast float parameters to `dtype`, leaving packed/quantized modules (which choose their own
    compute per call) and buffers such as rotary frequencies (kept in fp32 by transformers) alone."""
    from ..formats.qlinear import QuantLinear

    for module in model.modules():
        if isinstance(module, QuantLinear) or type(module).__module__.startswith("bitsandbytes"):
            continue
        for p in module.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


def evaluate_checkpoint(job: EvalJob, progress: Progress = NULL_PROGRESS, isolated: bool = False) -> EvalResult:
    from ..formats.load import compute_note, extra_resident_bytes, load_checkpoint

    set_threads()
    device = pick_device(job.device)
    tensors = load_file(job.tokens_path)
    ids = tensors["input_ids"]
    protocol = protocol_for(job, tensors, device)  # refuses a corpus too short before loading anything
    check = min(job.check_windows, protocol.windows) if (job.dtype != "float32" and device == "cpu") else 0
    # a checkpoint stored in one 16-bit dtype is loaded in it; its float32 check upcasts module by
    # module (eval/upcast.py): no float32 copy of the model
    stored = stored_dtype(Path(job.checkpoint)) if check else None
    load_dtype = job.dtype if not check else ("float32" if stored is None else str(stored).removeprefix("torch."))
    t0 = time.perf_counter()
    model, tokenizer, info = load_checkpoint(Path(job.checkpoint), load_dtype, device, job.trust_remote_code,
                                             job.compile_kernels)
    t_load = time.perf_counter() - t0
    check_result = None
    if check:
        # the same first windows (documents for lm-eval-word) in float32, then in the compute dtype
        with float32_compute(model) if stored is not None else nullcontext():
            ref = score(job.protocol, model, tensors, job.seqlen, check, job.batch_size, device, progress)
        cast_model(model, DTYPES[job.dtype])
        fast = score(job.protocol, model, tensors, job.seqlen, check, job.batch_size, device, progress)
        diff = (fast.ppl / ref.ppl - 1.0) * 100.0
        check_result = {"windows": check, "ppl_float32": ref.ppl, f"ppl_{job.dtype}": fast.ppl, "diff_pct": diff,
                        "tolerance_pct": job.check_tolerance_pct, "within": abs(diff) <= job.check_tolerance_pct}
    t1 = time.perf_counter()
    observer = fidelity_observer(job, protocol)
    ppl = score(job.protocol, model, tensors, job.seqlen, job.max_windows, job.batch_size, device, progress,
                observe=observer)
    t_ppl = time.perf_counter() - t1
    fidelity = None
    if observer is not None and job.write_reference:
        observer.save(Path(job.fidelity_reference))
    elif observer is not None:
        fidelity = observer.result()
    lat = None
    weights_bytes = resident_bytes(model) + extra_resident_bytes(model, info)
    if job.latency is not None:
        prompts = latency_prompts(job, ids, tokenizer)
        if job.latency.get("via") == "server":  # the serve engine loads the checkpoint itself
            from ..serve.http_latency import latency_via_server

            del model
            if device == "cuda":
                torch.cuda.empty_cache()
            lat = latency_via_server(Path(job.checkpoint), prompts, job.latency, job.dtype, device,
                                     job.trust_remote_code, progress)
        else:
            lat = measure_latency(model, prompts, job.latency.get("decode_tokens", 32),
                                  job.latency.get("warmup", 1), progress)
    assert (protocol.windows, protocol.tokens_scored, protocol.words) == (ppl.windows, ppl.tokens_scored, ppl.words)
    return EvalResult(
        ppl=ppl.ppl, nll_sum=ppl.nll_sum, protocol=protocol, size_bytes=info.size_bytes,
        weights_bytes=weights_bytes, peak_rss_bytes=peak_rss_bytes(), isolated=isolated,
        latency=lat,
        seconds={"load": t_load, "perplexity": t_ppl, "total": time.perf_counter() - t0,
                 "scored_tokens_per_s": ppl.tokens_scored / t_ppl if t_ppl > 0 else None},
        env={"llmquant": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
             "machine": platform.machine(), **environment(threads=False), "format": info.format,
             "compute": compute_note(info, job.dtype, device)},
        check=check_result, fidelity=fidelity,
    )


def evaluate_isolated(job: EvalJob, workdir: Path, progress: Progress = NULL_PROGRESS) -> EvalResult:
    """Run `evaluate_checkpoint` in a child process; progress comes back as JSON lines."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, out_path, log_path = workdir / "eval-job.json", workdir / "eval-result.json", workdir / "eval.log"
    job_path.write_text(job.to_json())
    out_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "llmquant.eval.worker", str(job_path), str(out_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rc = run_relayed(cmd, env, log_path, progress)
    if rc != 0 or not out_path.exists():
        data = read_json(out_path) or {}
        if data.get("user_error"):
            raise UserError(data["user_error"])
        tail = log_path.read_text().strip().splitlines()[-1:] if log_path.exists() else []
        raise RuntimeError(f"evaluation of {job.checkpoint} failed (exit {rc}): {' '.join(tail)}; log: {log_path}")
    data = read_json(out_path)
    if data.get("user_error"):
        raise UserError(data["user_error"])
    return EvalResult.from_dict(data["result"])

