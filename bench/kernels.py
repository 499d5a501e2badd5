"""Where the int4 CPU kernel beats dequantize-and-dense-matmul, for SmolLM2's Linear shapes.

    python bench/kernels.py [--out bench/results/kernels.md]

For each activation dtype and row count M, times QuantLinear's two paths (int4 kernel,
dense block path) and a plain dense fp32/bf16 matmul of the same weight; prints the M where
the dense path starts to win (the rule INT4_KERNEL_MAX_ROWS in llmquant/formats/qlinear.py: compare
the per-block sums, each Linear weighted by how often a block calls it).
Timings are medians of repeated calls, interleaved, in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import emit, header  # noqa: E402  (puts the project on sys.path)

from llmquant.formats import kernels  # noqa: E402
from llmquant.formats.intweight import IntWeight  # noqa: E402
from llmquant.formats.qlinear import QuantLinear  # noqa: E402
from llmquant.quantize.grid import group_index, quantize_rtn  # noqa: E402

SHAPES = {"q/o_proj": (576, 576), "k/v_proj": (192, 576), "gate/up_proj": (1536, 576), "down_proj": (576, 1536)}
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 512]


def timeit(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = header("int4 kernel vs dense path (SmolLM2 Linear shapes, W4 g64)", "python bench/kernels.py")
    lines += [f"{torch.get_num_threads()} threads. Microseconds per call (median). `int4` = _weight_int4pack_mm_for_cpu, `dense` = QuantLinear's "
             "dequantize-block + matmul (eager ops), `dense_c` = the same with the dequantization fused by torch.compile "
             "(what evaluation uses by default), `fp` = plain matmul with a float weight of the same dtype.", ""]
    fused = kernels.compiled_dequant()
    crossover = {}
    for dtype in (torch.float32, torch.bfloat16):
        lines += [f"## activations {str(dtype).removeprefix('torch.')}", "",
                  "| layer | M | int4 | dense | dense_c | fp |", "|---|---|---|---|---|---|"]
        for name, (n, k) in SHAPES.items():
            w = torch.randn(n, k)
            q, s, z = quantize_rtn(w, 4, 64, sym=True)
            iw = IntWeight(q, s, z, group_index(k, 64), 4)
            m = QuantLinear(iw, None)
            p = kernels.Int4Packed(m.packed, m.scale_zero, m.kernel_group)
            wf = iw.dequantize().to(dtype)
            for rows in ROWS:
                x = torch.randn(rows, k, dtype=dtype)
                t_int4 = timeit(lambda: kernels.int4_matmul(x, p), args.reps)
                t_dense = timeit(lambda: kernels.int4_dense_matmul(x, m.packed, m.scales, m.zeros, 64, m.q_shift), args.reps)
                t_fused = timeit(lambda: kernels.int4_dense_matmul(x, m.packed, m.scales, m.zeros, 64, m.q_shift, dequant=fused),
                                 args.reps)
                t_fp = timeit(lambda: x @ wf.t(), args.reps)
                lines.append(f"| {name} | {rows} | {t_int4:.0f} | {t_dense:.0f} | {t_fused:.0f} | {t_fp:.0f} |")
                if t_dense < t_int4:
                    crossover.setdefault(("eager", dtype, name), rows)
                if t_fused < t_int4:
                    crossover.setdefault(("compiled", dtype, name), rows)
        lines.append("")
    lines += ["## crossover (smallest M where the dense path beats int4; none listed: int4 wins up to 512)", ""]
    for (how, dtype, name), rows in sorted(crossover.items(), key=str):
        lines.append(f"- {how} dequantization, {str(dtype).removeprefix('torch.')} {name}: M = {rows}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
