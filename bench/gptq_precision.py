"""What `precision: float64` and `grid: mse` cost GPTQ at Llama-2-7B's layer shapes: the Hessian
accumulation and the solve (Cholesky factor + column loop) of one Linear, float32 minmax (the old
default) against float64 minmax and float64 mse, in one process.

    PYTHONPATH=. python bench/gptq_precision.py                                 # q_proj- and down_proj-shaped
    PYTHONPATH=. python bench/gptq_precision.py --shapes 4096x4096 --tokens 8192 --out bench/results/x.md

Random weights and inputs (correlated, as activations are: a few shared directions plus noise):
the times do not depend on the values. `--tokens` calibration tokens are folded into H in batches
of 2048 (16 x 512 tokens is the plan's default calibration; 128 x 2048 is 32x more Hessian work).
The solve is W3 g128 with group-aware reordering (our defaults). Each figure is one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # appended: bench/kernels.py must not shadow the kernels package
sys.path.insert(0, str(ROOT))
from common import emit, header  # noqa: E402


def inputs(tokens: int, width: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, width, generator=g)
    x = torch.randn(tokens, 16, generator=g) @ basis
    return x.add_(torch.randn(tokens, width, generator=g), alpha=0.3)


def main() -> None:
    import torch

    from llmquant.quantize.gptq.gptq_math import accumulate_hessian, gptq_quantize

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["4096x4096", "4096x11008"], help="OUTxIN")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--out")
    a = ap.parse_args()

    lines = header("GPTQ precision and grid at 7B layer shapes",
                   "PYTHONPATH=. python bench/gptq_precision.py " + " ".join(sys.argv[1:]))
    lines += [f"torch threads {torch.get_num_threads()}; {a.tokens} calibration tokens in batches of 2048; "
              f"W{a.bits} g{a.group_size}, group-aware reordering; random weights and inputs", "",
              "| shape out x in | precision, grid | Hessian s | solve s | total s | total vs float32 minmax |",
              "|---|---|---|---|---|---|"]
    for shape in a.shapes:
        out_f, in_f = (int(v) for v in shape.split("x"))
        W = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(1)) * 0.02
        X = inputs(a.tokens, in_f, 2)
        base = None
        for dtype, grid in ((torch.float32, "minmax"), (torch.float64, "minmax"), (torch.float64, "mse")):
            t0 = time.perf_counter()
            H, n = None, 0
            for r in range(0, a.tokens, 2048):
                H, n = accumulate_hessian(H, n, X[r:r + 2048][None], dtype)
            t1 = time.perf_counter()
            gptq_quantize(W, H, a.bits, a.group_size, True, act_group_aware=True, grid=grid)
            t2 = time.perf_counter()
            total = t2 - t0
            base = base or total
            name = str(dtype).removeprefix("torch.") + " " + grid
            lines.append(f"| {out_f} x {in_f} | {name} | {t1 - t0:.1f} | {t2 - t1:.1f} | {total:.1f} | "
                         f"{total / base:.2f} |")
            print(lines[-1], flush=True)
            del H
    emit(lines, a.out)


if __name__ == "__main__":
    main()
