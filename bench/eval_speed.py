"""Perplexity evaluation throughput: llmquant's evaluation vs a plain transformers fp32 loop.

    python bench/eval_speed.py [--windows 64] [--seqlen 512] [--out bench/results/eval_speed.md]

Same model (SmolLM2-135M, fp32 weights), same windows, same process. The plain loop is what
most scripts do: model(x, labels=x).loss per window, full logits, fp32. Ours is
`evaluate_checkpoint` with dtype auto (bf16 on AMX/avx512-bf16 CPUs, checked against fp32 on
2 windows) and fp32. Goal (issue 9): >= 2x the plain loop's tokens/s at perplexity within 0.1 %.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, emit, eval_text, header, smollm2_dir
from safetensors.torch import save_file


def plain_loop(model_dir: Path, ids: torch.Tensor, seqlen: int, windows: int) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    t = time.perf_counter()
    nll = 0.0
    with torch.no_grad():
        for w in range(windows):
            x = ids[:, w * seqlen:(w + 1) * seqlen]
            nll += float(model(x, labels=x).loss) * (seqlen - 1)
    secs = time.perf_counter() - t
    return math.exp(nll / (windows * (seqlen - 1))), windows * (seqlen - 1) / secs


def main() -> None:
    from llmquant.eval.evaluate import EvalJob, evaluate_checkpoint
    from llmquant.loading.runtime import resolve_dtype, set_threads
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    set_threads()
    work = Path(args.work)
    model_dir = smollm2_dir(work)
    label, text = eval_text()
    ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors="pt").input_ids
    tokens = Path(tempfile.mkdtemp()) / "ids.safetensors"
    save_file({"input_ids": ids}, str(tokens))
    rows = []
    ppl_plain, tps_plain = plain_loop(model_dir, ids, args.seqlen, args.windows)
    rows.append(("plain transformers loop, fp32", ppl_plain, tps_plain, None))
    auto = resolve_dtype("auto", "cpu")  # float32 where bf16 is not fast (e.g. at AVX2 dispatch): measured once
    for dtype in ("float32",) + ((auto,) if auto != "float32" else ()):
        job = EvalJob(checkpoint=str(model_dir), tokens_path=str(tokens), corpus=label, corpus_sha256="-",
                      seqlen=args.seqlen, max_windows=args.windows, dtype=dtype, device="cpu", check_windows=2)
        r = evaluate_checkpoint(job)
        rows.append((f"llmquant, {dtype}", r.ppl, r.seconds["scored_tokens_per_s"], r.check))
    lines = header("Perplexity evaluation throughput (SmolLM2-135M)",
                   f"python bench/eval_speed.py --windows {args.windows} --seqlen {args.seqlen}")
    lines += [f"Corpus: {label}, first {args.windows} windows of {args.seqlen} tokens.", "",
              "| evaluation | ppl | Δ vs plain | scored tokens/s | speed-up |", "|---|---|---|---|---|"]
    for name, ppl, tps, _ in rows:
        lines.append(f"| {name} | {ppl:.4f} | {(ppl / ppl_plain - 1) * 100:+.3f} % | {tps:.0f} | {tps / tps_plain:.2f}x |")
    for name, _, _, check in rows:
        if check:
            lines += ["", f"{name}: float32 check on the first {check['windows']} windows: "
                          f"{check['ppl_float32']:.4f} vs {check[[k for k in check if k.startswith('ppl_') and k != 'ppl_float32'][0]]:.4f} "
                          f"({check['diff_pct']:+.3f} %, tolerance {check['tolerance_pct']} %)"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
