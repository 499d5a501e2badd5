"""GPTQModel quantizes our calibration crops: `<gptqmodel venv>/bin/python gptqmodel_worker.py JOB.json`.

Runs in the peer's venv and imports nothing from llmquant (worker_common sits beside it).
Tested with gptqmodel 7.6.0 on torch 2.13.0+cpu. Set GPTQMODEL_CPU_WORKERS to the core count
(llmquant does). Settings map one to one (bits, group_size, sym, desc_act, damp_percent,
static_groups, true_sequential, act_group_aware, lm_head); the model is loaded in float32
(gptqmodel picks bf16 on a CPU unless told). Writes a GPTQ v1 checkpoint (gptqmodel's default
format) for `gptq`, AWQ GEMM for `awq`. AWQ runs in bfloat16 with packing backend torch_awq: its
default choice (AwqGEMMLinear) needs CUDA and AwqTorchLinear takes bf16/fp16 only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import worker_common as wc  # noqa: E402


def warm_up(progress) -> float:
    """gptqmodel JIT-compiles its CPU packing kernel on first use: build it before timing."""
    t0 = time.perf_counter()
    try:
        from gptqmodel.utils.cpp import load_pack_block_extension

        load_pack_block_extension()
    except Exception as e:  # it falls back to slower packing
        progress.message(f"gptqmodel: pack_block_cpu extension not available ({type(e).__name__}: {e})")
    return time.perf_counter() - t0


def gptq_config(s: dict) -> dict:
    desc_act = bool(s["desc_act"])
    return {"bits": s["bits"], "group_size": s["group_size"], "sym": s["sym"], "desc_act": desc_act,
            "damp_percent": s["damp_percent"], "static_groups": s["static_groups"],
            "true_sequential": s["true_sequential"], "act_group_aware": bool(s["act_group_aware"]) and not desc_act,
            "lm_head": bool(s.get("quantize_lm_head", False))}


def awq_config(s: dict) -> dict:
    return {"method": "awq", "format": "gemm", "bits": s["bits"], "group_size": s["group_size"], "sym": s["sym"],
            "lm_head": bool(s.get("quantize_lm_head", False))}


def quantize(job: dict, progress, method: str) -> dict:
    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    torch.manual_seed(job.get("seed", 0))
    warmup_s = warm_up(progress)
    kwargs = gptq_config(job["settings"]) if method == "gptq" else awq_config(job["settings"])
    dtype = job.get("dtype", "float32") if method == "gptq" else "bfloat16"
    quantize_kw = {} if method == "gptq" or torch.cuda.is_available() else {"backend": BACKEND.TORCH_AWQ}
    qc = QuantizeConfig(**kwargs)
    ids = wc.read_calibration(job["calibration"])
    calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in ids]
    t0 = time.perf_counter()
    with progress.task(f"{method} (gptqmodel): load", None):
        model = GPTQModel.load(job["model_dir"], qc, dtype=getattr(torch, dtype))
    load_s = time.perf_counter() - t0
    layers = wc.decoder_layers(model.model)
    t0 = time.perf_counter()
    with progress.task(f"{method} (gptqmodel): quantize", len(layers) or None) as advance:
        handles = wc.block_notes(layers, advance)
        model.quantize(calibration, batch_size=1, **quantize_kw)
        for h in handles:
            h.remove()
    quantize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with progress.task(f"{method} (gptqmodel): save", None):
        model.save(job["out_dir"])
    save_s = time.perf_counter() - t0
    from gptqmodel.version import __version__

    return {"peer": "gptqmodel", "version": __version__, "method": method, "dtype": dtype,
            "peer_config": {**kwargs, **{k: str(v) for k, v in quantize_kw.items()}},
            "seconds": {"warmup": warmup_s, "load": load_s, "quantize": quantize_s, "save": save_s,
                        "quantize_and_save": quantize_s + save_s}}


METHODS = {"gptq": lambda job, p: quantize(job, p, "gptq"), "awq": lambda job, p: quantize(job, p, "awq")}

if __name__ == "__main__":
    sys.exit(wc.run(sys.argv[1:], METHODS))
