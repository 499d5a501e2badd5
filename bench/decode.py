"""Packed-weight inference on the CPU: first-token latency, decode speed and resident weights of
4- and 8-bit checkpoints vs the fp32 baseline, in the same run.

    python bench/decode.py [--checkpoint DIR] [--out bench/results/decode.md]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/decode.py ...   # as torch dispatches on an AVX2-only CPU

Without --checkpoint, makes RTN W4 g64 and W8 g64 GPTQ-format checkpoints of SmolLM2 (the
kernels do not depend on how the integers were chosen; --checkpoint replaces the W4 one).
bf16 rows only where bf16 is fast on this CPU (llmquant.cpu). Goals (issues 9, 16): W4 decode
>= 1.5x fp32's, TTFT <= 1.2x; W8 decode >= 1.0x; W4 resident weights <= 1/3 of fp32's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import ROOT, emit, eval_text, header, smollm2_dir


def make_rtn(model_dir: Path, out: Path, bits: int) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmquant.quantize.base import QuantizeContext
    from llmquant.quantize.rtn.quantizer import RTNQuantizer
    from llmquant.quantize.rtn.config import RTNVariant
    from llmquant.runs import atomic_dir

    if (out / "config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with atomic_dir(out) as tmp:
        RTNQuantizer().quantize(model, RTNVariant(name=f"w{bits}", method="rtn", bits=bits, group_size=64), None, tmp,
                                QuantizeContext(tokenizer=AutoTokenizer.from_pretrained(model_dir)))
    return out


def main() -> None:
    from llmquant.eval.evaluate import cast_model, resident_bytes
    from llmquant.eval.latency import measure_latency, prompts_from_stream
    from llmquant.formats.load import load_checkpoint
    from llmquant.cpu import cpu_info
    from llmquant.loading.runtime import DTYPES, set_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    set_threads()
    work = Path(args.work)
    base = smollm2_dir(work)
    w4 = Path(args.checkpoint) if args.checkpoint else make_rtn(base, work / "smollm2-rtn-w4-g64", 4)
    w8 = make_rtn(base, work / "smollm2-rtn-w8-g64", 8)
    _, text = eval_text()
    results = []
    runs = [("fp32 baseline", base, "float32"), ("W4 g64, fp32 model", w4, "float32"), ("W8 g64, fp32 model", w8, "float32")]
    if cpu_info().bf16_fast:
        runs += [("bf16 baseline", base, "bfloat16"), ("W4 g64, bf16 model", w4, "bfloat16"),
                 ("W8 g64, bf16 model", w8, "bfloat16")]
    for label, path, dtype in runs:
        model, tok, _ = load_checkpoint(path, "float32", "cpu", compile_kernels=True)
        cast_model(model, DTYPES[dtype])
        ids = tok(text[:200000], return_tensors="pt").input_ids
        prompts = prompts_from_stream(ids, args.repeats, args.prompt_tokens)
        lat = measure_latency(model, prompts, args.decode_tokens, warmup=1)
        results.append((label, lat, resident_bytes(model)))
        del model
    base_lat, base_mem = results[0][1], results[0][2]
    command = "python bench/decode.py" + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "")
    lines = header("Packed-weight inference on the CPU (SmolLM2-135M)", command)
    lines += [f"Checkpoint: {w4}. Prompt {args.prompt_tokens} tokens, {args.decode_tokens} decoded, "
              f"median of {args.repeats} runs after 1 warm-up, batch 1.", "",
              "| model | TTFT ms (median) | TTFT p90 | TTFT vs fp32 | decode tok/s | decode vs fp32 | "
              "resident weights MB | vs fp32 |",
              "|---|---|---|---|---|---|---|---|"]
    for label, lat, mem in results:
        lines.append(f"| {label} | {lat.ttft_ms_median:.1f} | {lat.ttft_ms_p90:.1f} | "
                     f"{lat.ttft_ms_median / base_lat.ttft_ms_median:.2f}x | {lat.decode_tok_s:.1f} | "
                     f"{lat.decode_tok_s / base_lat.decode_tok_s:.2f}x | {mem / 1e6:.0f} | {mem / base_mem:.2f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
