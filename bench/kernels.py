"""QuantLinear's paths per CPU capability: decode kernels vs the dense path vs a float matmul.

    python bench/kernels.py [--shapes smollm2|7b] [--out bench/results/kernels-DATE-CAP.md]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/kernels.py ...   # as torch dispatches on an AVX2-only CPU

For W4 and W8 (g64) and each activation row count M, times every path QuantLinear can take:
`int4` (torch's _weight_int4pack_mm_for_cpu, bf16 math), `int4c` (our C kernel on the same
bytes, fp32), `int8` (the grouped 8-bit C kernel, fp32), `dense` (dequantize blocks + matmul as QuantLinear does it for this dtype: C
dequantization in fp32, compiled otherwise) and `fp` (a plain matmul with a float weight). Rows
are summed over one decoder block (each Linear as often as a block calls it). The rules in
llmquant/formats/qlinear.py (INT4_KERNEL_MAX_ROWS, C_INT4_MAX_ROWS, INT8_KERNEL_MAX_ROWS) come from these
tables; the header records the CPU and the capability torch dispatched to.
Timings are medians of repeated calls in one process; run one benchmark at a time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import emit, header  # noqa: E402  (puts the project on sys.path)

from llmquant.cpu import cpu_info  # noqa: E402
from llmquant.formats import kernels, native  # noqa: E402
from llmquant.formats.intweight import IntWeight  # noqa: E402
from llmquant.formats.qlinear import C_INT4_MAX_ROWS, INT4_KERNEL_MAX_ROWS, INT8_KERNEL_MAX_ROWS, QuantLinear  # noqa: E402
from llmquant.quantize.grid import group_index, quantize_rtn  # noqa: E402

BLOCKS = {  # name: (out, in, calls per decoder block)
    "smollm2": {"q/o_proj": (576, 576, 2), "k/v_proj": (192, 576, 2), "gate/up_proj": (1536, 576, 2),
                "down_proj": (576, 1536, 1)},
    "7b": {"q/k/v/o_proj": (4096, 4096, 4), "gate/up_proj": (11008, 4096, 2), "down_proj": (4096, 11008, 1)},
}
ROWS = {"smollm2": [1, 2, 4, 8, 16, 32, 64, 128, 512], "7b": [1, 4, 8, 16, 32, 128]}


def timeit(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def paths(m: QuantLinear, wf: torch.Tensor):
    """The callables for each path this module can take (None where it cannot)."""
    dense = QuantLinear.forward.__get__(m)

    def forced_dense(x):
        m.path_for = lambda *a: "dense"
        try:
            return dense(x)
        finally:
            del m.path_for

    int4 = (lambda x: kernels.int4_matmul(x, kernels.Int4Packed(m.packed, m.scale_zero, m.kernel_group))) \
        if m.packed is not None else None
    int8 = (lambda x: native.int8_group_matmul(x, m.rows, m.scales, m.zeros, m.int8_group)) if m.int8_group else None
    lay = m.int4_layout
    int4c = (lambda x: native.int4_matmul(x, m.packed, m.out_features, lay.block, lay.split, m.scales, m.zeros,
                                          m.q_shift, m.group_size)) if lay is not None else None
    return {"int4": int4, "int4c": int4c, "int8": int8, "dense": forced_dense, "fp": lambda x: x @ wf.t()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", choices=sorted(BLOCKS), default="smollm2")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (30 if args.shapes == "smollm2" else 5)
    torch.manual_seed(0)
    info = cpu_info()
    dtypes = [torch.float32] + ([torch.bfloat16] if info.bf16_fast else [])
    cmd = f"python bench/kernels.py --shapes {args.shapes}"
    lines = header(f"QuantLinear paths on {info.capability} ({args.shapes} Linear shapes, g64)", cmd)
    lines += [f"{torch.get_num_threads()} threads; torch dispatch {info.capability}"
              f"{' (emulated with ATEN_CPU_CAPABILITY on a CPU with ' + ' '.join(info.flags) + ')' if info.emulated else ''}"
              f"; C kernels {'compiled' if native.load('int8_group_gemm') else 'UNAVAILABLE'}.",
              f"Microseconds per decoder block (median of {reps} calls per Linear, summed with each Linear's calls "
              "per block). bf16 rows only where bf16 is fast on this CPU.",
              f"Rules in force: C_INT4_MAX_ROWS = {C_INT4_MAX_ROWS}, INT8_KERNEL_MAX_ROWS = {INT8_KERNEL_MAX_ROWS}, INT4_KERNEL_MAX_ROWS = "
              f"{ {str(k[0]).removeprefix('torch.') + (' compiled' if k[1] else ' eager'): v for k, v in INT4_KERNEL_MAX_ROWS.items()} }.",
              ""]
    fused = kernels.compiled_dequant()
    for bits in (4, 8):
        mods = {}
        for name, (n, k, calls) in BLOCKS[args.shapes].items():
            w = torch.randn(n, k)
            q, s, z = quantize_rtn(w, bits, 64, sym=True)
            iw = IntWeight(q, s, z, group_index(k, 64), bits)
            mods[name] = (QuantLinear(iw, None, fused), iw.dequantize(), calls, k)
        for dtype in dtypes:
            dname = str(dtype).removeprefix("torch.")
            lines += [f"## W{bits} g64, activations {dname}", "",
                      "| M | int4 | int4c | int8 | dense | fp | best | best vs fp |", "|---|---|---|---|---|---|---|---|"]
            for rows in ROWS[args.shapes]:
                total: dict[str, float] = {}
                for name, (m, wf, calls, k) in mods.items():
                    x = torch.randn(rows, k, dtype=dtype)
                    for path, fn in paths(m, wf.to(dtype)).items():
                        if fn is None:
                            continue
                        total[path] = total.get(path, 0.0) + calls * timeit(lambda: fn(x), reps)
                best = min((p for p in total if p != "fp"), key=total.get)
                cells = [f"{total[p]:.0f}" if p in total else "-" for p in ("int4", "int4c", "int8", "dense", "fp")]
                lines.append(f"| {rows} | {' | '.join(cells)} | {best} | {total['fp'] / total[best]:.2f}x |")
            lines.append("")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
