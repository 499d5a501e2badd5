"""What the mixed method's sensitivity pass costs on Llama-2-7B layer shapes, per block.

    PYTHONPATH=. python bench/sensitivity_7b.py                            # rtn and gptq estimates, 1 block
    PYTHONPATH=. python bench/sensitivity_7b.py --estimates rtn --layers 2 --out bench/results/x.md

The model is bench/scale.py's synthetic Llama (hidden 4096, intermediate 11008, 32 heads; random
weights, std 0.02, bf16 files; the demo's tokenizer): random weights make every solve as costly
as on a real model, so times and memory are real, the costs themselves meaningless. Each estimate
runs in its own process, from the files, as `llmquant run` does it (lazy skeleton, one block
resident): the sensitivity pass of `method: mixed` with candidate bits 2/3/4/8 x group sizes
64/128 (8 settings per Linear), calibration `--n-samples` x `--seqlen` crops of wikitext-2 valid.
Recorded: wall seconds and peak RSS of the pass, seconds per block, and the per-setting solve
seconds summed (the rest is the forwards and Hessians). The 7B projection is the per-block time
x 32. With weighting fisher (the default) the pass starts with a streamed forward and backward over
`fisher_samples` (16) sequences; its seconds are the "fisher s" column. Baseline in the same run:
uniform GPTQ W4 g128 on the same model (bench/scale.py's child), so the ratio "sensitivity / one
GPTQ quantization" is machine-independent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # appended: bench/kernels.py must not shadow the kernels package
sys.path.insert(0, str(ROOT))
from common import WIKI_VALID, emit, header, smollm2_dir  # noqa: E402

FULL_LAYERS = 32


def child(args: argparse.Namespace) -> None:
    import torch

    from llmquant.data import calibration_crops
    from llmquant.loading.models import load_tokenizer
    from llmquant.quantize.base import CalibrationSet, QuantizeContext
    from llmquant.quantize.lazy import lazy_model
    from llmquant.quantize.measure import measure_step
    from llmquant.quantize.mixed.config import MixedVariant
    from llmquant.quantize.mixed.sensitivity import sensitivity

    tok = load_tokenizer(Path(args.model))
    ids = torch.tensor([tok(WIKI_VALID.read_text()).input_ids])
    crops = calibration_crops(ids, args.n_samples, args.seqlen, 0, "wikitext-2 valid")
    variant = MixedVariant(name="m", method="mixed", budget={"bits": 4.0}, estimate=args.estimate,
                           candidate_bits=[2, 3, 4, 8], candidate_group_sizes=[64, 128])
    model, blocks = lazy_model(Path(args.model))
    with tempfile.TemporaryDirectory() as where, measure_step("cpu") as m:
        t0 = time.perf_counter()
        _, table = sensitivity(model, variant, CalibrationSet(crops, "bench"),
                               QuantizeContext(tokenizer=tok, blocks=blocks, model_key="synthetic"), Path(where))
        m["wall"] = time.perf_counter() - t0  # the pass alone (measure_step also times it)
    m["solve_seconds"] = sum(o["seconds"] for e in table["layers"] for o in e["options"])
    m["settings"] = sum(len(e["options"]) for e in table["layers"])
    m["fisher_seconds"] = table.get("fisher_seconds") or 0.0
    print("RESULT " + json.dumps(m))


def run_child(argv: list[str]) -> dict:
    p = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=ROOT)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode or line is None:
        sys.exit(f"child {' '.join(argv)} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--estimates", nargs="+", default=["rtn", "gptq"], choices=["rtn", "gptq"])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--no-baseline", action="store_true", help="skip the uniform GPTQ W4 g128 run")
    ap.add_argument("--work", default=str(ROOT.parent / "bench-work"))
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--estimate", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from scale import synthetic_llama

    work = Path(args.work)
    model = synthetic_llama(work / f"llama7b-shapes-{args.layers}l", args.layers, smollm2_dir(work))
    calib = ["--n-samples", str(args.n_samples), "--seqlen", str(args.seqlen)]
    rows = []
    for est in args.estimates:
        r = run_child(["--child", "--estimate", est, "--model", str(model), *calib])
        per_block = r["wall"] / args.layers
        rows.append(f"| sensitivity, estimate {est} | {r['settings']} | {r['wall']:.1f} | {per_block:.1f} | "
                    f"{r['solve_seconds']:.1f} | {r['fisher_seconds']:.1f} | {r['quantize_peak_rss_bytes'] / 2**30:.2f} | "
                    f"{per_block * FULL_LAYERS / 3600:.2f} |")
    if not args.no_baseline:
        with tempfile.TemporaryDirectory() as out:
            p = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--child", "--method", "gptq",
                                "--model", str(model), "--out", out, "--device", "cpu", *calib],
                               capture_output=True, text=True, cwd=ROOT)
            line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line:
                r = json.loads(line[7:])
                per_block = r["quantize_seconds"] / args.layers
                rows.append(f"| uniform GPTQ W4 g128 (baseline) | {7 * args.layers} | {r['quantize_seconds']:.1f} | "
                            f"{per_block:.1f} | - | - | {r['quantize_peak_rss_bytes'] / 2**30:.2f} | {per_block * FULL_LAYERS / 3600:.2f} |")
            else:
                rows.append(f"| uniform GPTQ W4 g128 (baseline) | failed: {p.stderr[-300:]!r} |")
    cmd = "PYTHONPATH=. python bench/sensitivity_7b.py " + " ".join(sys.argv[1:])
    lines = header("Sensitivity pass on Llama-2-7B layer shapes (random weights)", cmd)
    lines += [f"Synthetic Llama, {args.layers} block(s) of 7B shapes, calibration {args.n_samples} x {args.seqlen} "
              "tokens of wikitext-2 valid; candidates bits 2/3/4/8 x group 64/128. Random weights: times and "
              "memory are real, costs meaningless.", "",
              "| pass | settings solved | wall s | s / block | solve s (sum) | fisher s | peak RSS GiB | 7B (32 blocks) h |",
              "|---|---|---|---|---|---|---|---|", *rows]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
