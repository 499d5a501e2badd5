"""The peer side of bench/awq_cpu.py: AWQ with gptqmodel 7.6 in its own venv.

Run by the bench as `<peer venv>/bin/python bench/gptqmodel_awq_worker.py ...` with
GPTQMODEL_CPU_WORKERS=2; imports only torch, safetensors and gptqmodel (never llmquant).
Settings: AWQ GEMM, zero point (sym=False: AutoAWQ's default grid), everything else gptqmodel's
default (n_grid 20, duo scaling, clipping with 512 sampled tokens), packing with backend
torch_awq (AwqTorchLinear: any device; the auto choice AwqGEMMLinear needs CUDA). The model
loads in bfloat16 by default: AwqTorchLinear takes float16/bfloat16 only, which is why
gptqmodel's AWQ fails at packing in float32 (../shared/docs/PROTOCOLS.md). Writes a JSON result: wall time of quantize + save, peak RSS of
the process (and during quantize), RSS after loading.
"""

import argparse
import json
import os
import resource
import threading
import time


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--backend", default="torch_awq",
                   help="gptqmodel BACKEND for the packing kernel; its default (auto) picks AwqGEMMLinear, "
                        "which refuses to run without CUDA ('AWQ: CUDA is not available')")
    a = p.parse_args()

    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from gptqmodel.version import __version__
    from safetensors.torch import load_file

    ids = load_file(a.calib)["input_ids"]
    calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in ids]
    qc = QuantizeConfig(bits=a.bits, group_size=a.group_size, sym=False, quant_method="awq", format="gemm")
    t0 = time.perf_counter()
    model = GPTQModel.load(a.model, qc, dtype=getattr(torch, a.dtype))
    load_s = time.perf_counter() - t0
    rss_loaded = rss()

    peak = [rss()]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    model.quantize(calibration, batch_size=1, backend=BACKEND(a.backend))
    model.save(a.out)
    quantize_s = time.perf_counter() - t0
    stop.set()
    t.join()
    with open(a.result, "w") as f:
        json.dump({"tool": f"gptqmodel {__version__} awq ({a.dtype})", "load_s": load_s, "quantize_s": quantize_s,
                   "rss_after_load_mb": rss_loaded / 2**20, "peak_rss_quantize_mb": max(peak[0], rss()) / 2**20,
                   "peak_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "backend": a.backend, "config": {k: str(v) for k, v in vars(qc).items() if not k.startswith("_")}}, f)


if __name__ == "__main__":
    main()
