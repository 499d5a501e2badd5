"""llm-compressor quantizes our calibration crops: `<llmcompressor venv>/bin/python llmcompressor_worker.py JOB.json`.

Runs in the peer's venv and imports nothing from llmquant (worker_common sits beside it).
Tested with llmcompressor 0.14.0.1 (compressed-tensors 0.19.0, transformers 5.17.0, torch
2.13.0+cpu). Writes compressed-tensors pack-quantized checkpoints.

Mapping of our settings (what cannot be honoured is listed in llmquant/peers/__init__.py):
bits -> num_bits, group_size -> strategy group (channel for -1), sym -> symmetric,
damp_percent -> dampening_frac, block_size -> block_size, desc_act or act_group_aware ->
actorder "static" (else none), quantize_lm_head -> lm_head not ignored. Its grids are always
chosen from the weights before the solve, and a block's Linears all calibrate on the block's
inputs (no true-sequential within a block).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import worker_common as wc  # noqa: E402


def weight_args(s: dict) -> dict:
    grouped = s["group_size"] != -1
    return {"num_bits": s["bits"], "type": "int", "symmetric": s["sym"],
            "strategy": "group" if grouped else "channel", "group_size": s["group_size"] if grouped else None}


def ignore_list(s: dict) -> list[str]:
    return [] if s.get("quantize_lm_head") else ["lm_head"]


def gptq_recipe(s: dict) -> tuple[list, dict]:
    from llmcompressor.modifiers.gptq import GPTQModifier

    actorder = "static" if (s["desc_act"] or s["act_group_aware"]) else None
    cfg = {"config_groups": {"group_0": {"targets": ["Linear"], "weights": weight_args(s)}},
           "ignore": ignore_list(s), "block_size": s["block_size"], "dampening_frac": s["damp_percent"],
           "actorder": actorder}
    return [GPTQModifier(**cfg)], cfg


def awq_recipe(s: dict) -> tuple[list, dict]:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    cpu_pin_memory_fix()
    cfg = {"config_groups": {"group_0": {"targets": ["Linear"], "weights": weight_args(s)}},
           "ignore": ignore_list(s)}
    return [AWQModifier(), QuantizationModifier(**cfg)], {"awq": {}, "quantization": cfg}


def cpu_pin_memory_fix() -> None:
    """llm-compressor 0.14's AWQ pins cached activations, which fails without an accelerator."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, *a, **k: None


def quantize(job: dict, progress, method: str) -> dict:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmcompressor

    torch.manual_seed(job.get("seed", 0))
    s = job["settings"]
    ids = wc.read_calibration(job["calibration"])
    n, seqlen = ids.shape
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * seqlen for _ in range(n)]})
    dtype = job.get("dtype", "float32")
    t0 = time.perf_counter()
    with progress.task(f"{method} (llmcompressor): load", None):
        model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=getattr(torch, dtype))
        tok = AutoTokenizer.from_pretrained(job["model_dir"])
    load_s = time.perf_counter() - t0
    recipe, cfg = gptq_recipe(s) if method == "gptq" else awq_recipe(s)
    layers = wc.decoder_layers(model)
    t0 = time.perf_counter()
    with progress.task(f"{method} (llmcompressor): quantize", len(layers) or None) as advance:
        handles = wc.block_notes(layers, advance)
        oneshot(model=model, tokenizer=tok, dataset=data, recipe=recipe, num_calibration_samples=n,
                max_seq_length=seqlen, shuffle_calibration_samples=False, output_dir=None, log_dir=None)
        for h in handles:
            h.remove()
    quantize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with progress.task(f"{method} (llmcompressor): save", None):
        model.save_pretrained(job["out_dir"], save_compressed=True)
        tok.save_pretrained(job["out_dir"])
    save_s = time.perf_counter() - t0
    return {"peer": "llmcompressor", "version": llmcompressor.__version__, "method": method, "dtype": dtype,
            "peer_config": cfg,
            "packages": {"compressed-tensors": wc.version_of("compressed-tensors")},
            "seconds": {"load": load_s, "quantize": quantize_s, "save": save_s, "quantize_and_save": quantize_s + save_s}}


METHODS = {"gptq": lambda job, p: quantize(job, p, "gptq"), "awq": lambda job, p: quantize(job, p, "awq")}

if __name__ == "__main__":
    sys.exit(wc.run(sys.argv[1:], METHODS))
