"""GPTQ's H⁻¹ factor: torch.cholesky_inverse against cholesky_solve(I, L), the form
gptq_math.inverse_cholesky_upper uses, at the input widths of SmolLM2 and Llama-2-7B.

    PYTHONPATH=. python bench/cholesky_inverse.py                      # widths 576 1536 4096
    PYTHONPATH=. python bench/cholesky_inverse.py --widths 4096 11008 --repeats 1 --out bench/results/x.md

H is a random symmetric positive definite float32 matrix (XᵀX of 2n Gaussian rows, damped by 1 %
of its mean diagonal, as GPTQ damps): the timings do not depend on the values. Each form is timed
from the Cholesky factor L (shared) to H⁻¹; the best of `--repeats` is kept. Also recorded: the
largest relative difference between the two inverses (both are H⁻¹ to float32 rounding).
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


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[576, 1536, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in args.widths:
        X = torch.randn(2 * n, n, generator=g)
        H = X.T @ X
        H.diagonal().add_(0.01 * H.diagonal().mean())
        L = torch.linalg.cholesky(H)
        eye = torch.eye(n)
        old = best_of(lambda: torch.cholesky_inverse(L), args.repeats)
        new = best_of(lambda: torch.cholesky_solve(eye, L), args.repeats)
        a, b = torch.cholesky_inverse(L), torch.cholesky_solve(eye, L)
        diff = float((a - b).abs().max() / a.abs().max())
        rows.append(f"| {n} | {old:.3f} | {new:.3f} | {old / new:.1f}x | {diff:.1e} |")
    cmd = "PYTHONPATH=. python bench/cholesky_inverse.py " + " ".join(sys.argv[1:])
    lines = header("H⁻¹ from the Cholesky factor: cholesky_inverse vs cholesky_solve(I, L)", cmd)
    lines += [f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, best of {args.repeats}.", "",
              "| width | cholesky_inverse s | cholesky_solve(I, L) s | speed-up | max rel. difference |",
              "|---|---|---|---|---|", *rows]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
