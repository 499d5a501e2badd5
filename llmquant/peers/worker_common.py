"""What both peer workers share. Runs in the PEER's interpreter: standard library at import
time, torch/safetensors only inside functions, and nothing from llmquant.

The job is a JSON file (see llmquant/peers/job.py for its fields); the worker writes the
checkpoint into job["out_dir"] and a small JSON result into job["result"]:
{"peer", "version", "packages", "method", "peer_config", "seconds", "peak_rss_bytes", ...} or
{"error": "<one line>"}. Progress goes out as JSON lines on the original stdout (the protocol of
llmquant/worker_io.py, as llmquant's eval worker); everything the peer library prints is sent
to stderr (the log).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

JOB_VERSION = 1
QUANT_MARKERS = ("qweight", "weight_packed")  # a Linear whose tensors include one of these is quantized
TOKENIZER_SKIP = {"config.json", "model.safetensors.index.json", "quantize_config.json", "quant_log.csv"}


def _load_worker_io():
    """llmquant/worker_io.py (standard library only), loaded by its path: the progress protocol is
    written once, and llmquant itself is not importable in the peer's interpreter."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "worker_io.py"
    spec = importlib.util.spec_from_file_location("llmquant_worker_io", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Progress = _load_worker_io().JsonLinesProgress
"""JSON lines {"event": start|advance|end|message, ...} on a stream (llmquant/worker_io.py)."""


def progress_channel() -> Progress:
    """Keep stdout for progress and point fd 1 at stderr, so that the peer library's prints and
    progress bars land in the log instead of the progress channel."""
    fd = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = os.fdopen(os.dup(2), "w", buffering=1)
    return Progress(os.fdopen(fd, "w", buffering=1))


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM; Linux), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def version_of(name: str) -> str | None:
    import importlib.metadata as m

    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None


def block_notes(layers, advance) -> list:
    """Note 'block i/N' the first time each decoder block runs (the peers go block by block)."""
    seen: set[int] = set()
    handles = []
    t0 = time.perf_counter()
    n = len(layers)
    for i, layer in enumerate(layers):
        def hook(_module, _args, i=i):
            if i not in seen:
                seen.add(i)
                advance(1, f"block {i + 1}/{n} ({time.perf_counter() - t0:.0f} s)")
        handles.append(layer.register_forward_pre_hook(hook))
    return handles


def decoder_layers(model):
    """The decoder blocks of a transformers causal LM (an empty list when not found)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def copy_tokenizer(model_dir: Path, out_dir: Path) -> None:
    """The base model's tokenizer and generation files, where the peer did not save them."""
    for f in Path(model_dir).iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt", ".gguf") and f.name not in TOKENIZER_SKIP:
            target = Path(out_dir) / f.name
            if not target.exists():
                shutil.copy2(f, target)


def cast_dense(out_dir: Path, dtype_name: str) -> list[str]:
    """Store the tensors left unquantized (embeddings, norms, an unquantized head) in `dtype_name`,
    as our own checkpoints do, so sizes compare; the peer's quantized layers (and their scales)
    are kept exactly as written. Returns the names cast."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    cast: list[str] = []
    for f in sorted(Path(out_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            meta = h.metadata() or {}
            tensors = {k: h.get_tensor(k) for k in h.keys()}
        quantized = {k.rsplit(".", 1)[0] for k in tensors if k.rsplit(".", 1)[-1] in QUANT_MARKERS}
        changed = False
        for k, t in tensors.items():
            if k.rsplit(".", 1)[0] in quantized or not t.is_floating_point() or t.dtype == dtype:
                continue
            tensors[k] = t.to(dtype)
            cast.append(k)
            changed = True
        if changed:
            tmp = f.with_name(f".{f.name}.tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
            os.replace(tmp, f)
    cfg_path = Path(out_dir) / "config.json"
    if cast and cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        for key in ("dtype", "torch_dtype"):
            if key in cfg:
                cfg[key] = dtype_name
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return cast


def read_calibration(path: str):
    """Our calibration crops: the int64 tensor [n_samples, seqlen] stored as "input_ids"."""
    from safetensors.torch import load_file

    return load_file(path)["input_ids"]


def write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def run(argv: list[str], methods: dict) -> int:
    """Read the job named in argv, run methods[job["method"]](job, progress) -> result dict,
    finish the checkpoint (tokenizer, dense dtype) and write the result JSON."""
    job = json.loads(Path(argv[0]).read_text())
    progress = progress_channel()
    if job.get("version") != JOB_VERSION:
        write_json(job["result"], {"error": f"job version {job.get('version')} is not {JOB_VERSION}: "
                                            "llmquant and this worker disagree"})
        return 2
    fn = methods.get(job["method"])
    if fn is None:
        write_json(job["result"], {"error": f"method {job['method']!r} is not supported by this worker "
                                            f"(supported: {', '.join(sorted(methods))})"})
        return 2
    try:
        result = fn(job, progress)
        copy_tokenizer(Path(job["model_dir"]), Path(job["out_dir"]))
        if job.get("save_dtype"):
            result["cast_to_" + job["save_dtype"]] = len(cast_dense(Path(job["out_dir"]), job["save_dtype"]))
    except Exception as e:  # reported as one line; the traceback goes to the log
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:400]
        write_json(job["result"], {"error": f"{type(e).__name__}: {first}"})
        return 1
    result.setdefault("peak_rss_bytes", peak_rss_bytes())
    result["packages"] = {n: version_of(n) for n in ("torch", "transformers", "safetensors")} | \
        {"python": sys.version.split()[0]} | result.get("packages", {})
    write_json(job["result"], result)
    return 0
