"""The size-quality frontier a sensitivity table predicts: for average bits per weight from the
smallest to the largest reachable, the allocation the knapsack picks and its predicted cost.

    PYTHONPATH=. python bench/mixed_frontier.py runs/smollm2-mixed/cache/sensitivity-KEY.json
    PYTHONPATH=. python bench/mixed_frontier.py FILE --other-mb 55.7 --bits 4.36 5.95 7.24

With `weighting: fisher` the cost is a predicted rise of the mean per-token loss in nats, so the
predicted perplexity increase is exp(cost) - 1 (a prediction: bench/sensitivity_check.py compares
it with measured runs). `--other-mb`: the checkpoint's bytes outside the quantized Linears
(embeddings, norms; SmolLM2: 55.7 MB), so a row also shows the whole checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # appended: bench/ first on sys.path would shadow packages (bench/kernels.py)


def main() -> None:
    from llmquant.quantize.mixed.predict import Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", type=Path, help="a sensitivity JSON (cache/sensitivity-<key>.json of a run)")
    ap.add_argument("--bits", type=float, nargs="*", help="sizes to show (default: a grid over the reachable range)")
    ap.add_argument("--other-mb", type=float, default=0.0, help="checkpoint MB outside the quantized Linears")
    ap.add_argument("--allocator", default="sensitivity", choices=("sensitivity", "by-type"))
    args = ap.parse_args()
    table = json.loads(args.table.read_text())
    p = Predictor.from_dict(table, args.allocator)
    lo, hi = p.reachable()
    grid = args.bits or [round(lo + (hi - lo) * i / 12, 3) for i in range(13)]
    fisher = table.get("weighting") == "fisher"
    print(f"{args.table}: {len(p.units)} units, {p.n_weights} weights, reachable {lo:.3f}-{hi:.3f} bits/weight, "
          f"cost = {table.get('weighting', 'output')}, allocator {args.allocator}")
    print("| bits/weight | Linears MB | checkpoint MB | predicted cost |" + (" predicted Δppl % |" if fisher else ""))
    print("|---|---|---|---|" + ("---|" if fisher else ""))
    for b in grid:
        if not lo <= b <= hi:
            print(f"| {b:.3f} | out of reach |")
            continue
        c = p.cost(b)
        mb = b * p.n_weights / 8 / 1e6
        print(f"| {b:.3f} | {mb:.1f} | {mb + args.other_mb:.1f} | {c:.4f} |" +
              (f" {100 * math.expm1(c):.2f} |" if fisher else ""))


if __name__ == "__main__":
    main()
