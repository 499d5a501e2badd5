"""Where does LLM.int8's perplexity gap on SmolLM2 come from? (run by hand; minutes)

Splits bitsandbytes LLM.int8 (threshold 6) into its parts, each measured on the quick protocol
(wikitext-2 test, first 64 windows of 512 tokens, fp32 compute), in one process so the ratios
compare:
  dense            the fp32 base model
  fp16-store       unquantized tensors rounded through fp16, as the checkpoint stores them
  fp16-inputs      + every block Linear's input rounded to fp16 (the "inputs cast to fp16")
  int8-weights     + int8 per-row weights (LLM.int8's weight grid), activations untouched
  int8-emulated    LLM.int8 emulated without the fp16 input rounding (activations int8 per
                   token except columns >= threshold) -- the activation quantization itself
  bnb-int8         the real thing: method bnb, mode int8, saved and reloaded by llmquant
  bnb-int8-t0      threshold 0: no outlier columns kept in floating point
Also counts how many input columns LLM.int8 keeps in floating point per layer; with --nf4,
NF4 as evaluated (bitsandbytes' bf16 CPU kernel on AVX512-BF16 machines) and with fp32 matmuls.

  python bench/bnb_int8_gap.py --base runs/smollm2-bnb/base-model \
      --tokens runs/smollm2-bnb/cache/eval-tokens.safetensors --out bench/results/bnb_int8_gap.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_base(path: Path, fp16_store: bool):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if fp16_store:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.half().float())
    return m


def linears(model):
    return [(n, m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJ]


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' weight grid: fp16 weights, int8 per row with absmax scale."""
    w16 = w.half().float()
    absmax = w16.abs().amax(1)
    return torch.round(w16 * (127.0 / absmax.unsqueeze(1))), absmax


def patch(model, make_forward):
    for _, mod in linears(model):
        mod.forward = make_forward(mod)


def fp16_inputs(mod):
    w = mod.weight
    return lambda x: F.linear(x.half().float(), w, mod.bias)


def int8_weights(mod):
    cb, scb = int8_rows(mod.weight.detach())
    w = cb * (scb.unsqueeze(1) / 127.0)
    return lambda x: F.linear(x, w, mod.bias)


def int8_emulated(threshold: float, stats: dict):
    def make(mod):
        cb, scb = int8_rows(mod.weight.detach())
        w_deq = cb * (scb.unsqueeze(1) / 127.0)

        def forward(x):
            a = x.reshape(-1, x.shape[-1])
            outlier = a.abs() >= threshold
            cols = outlier.any(0)
            stats["cols"] = stats.get("cols", 0) + int(cols.sum())
            stats["calls"] = stats.get("calls", 0) + 1
            stats["width"] = stats.get("width", 0) + a.shape[1]
            rest = a.masked_fill(outlier, 0)
            row = rest.abs().amax(1, keepdim=True).clamp_min(1e-12)
            ca = torch.round(rest * (127.0 / row))
            ca[:, cols] = 0
            out = (ca @ cb.t()) * (row * scb.unsqueeze(0)) / (127.0 * 127.0)
            out = out + a[:, cols] @ w_deq[:, cols].t()
            return out.reshape(*x.shape[:-1], cb.shape[0])

        return forward

    return make


def outlier_share(model, ids, seqlen: int, windows: int, thresholds: list[float]) -> dict[str, float]:
    """Share of Linear input columns LLM.int8 keeps in floating point, per threshold (dense model)."""
    counts = {t: 0 for t in thresholds}
    total = [0]

    def hook(_mod, args):
        a = args[0].reshape(-1, args[0].shape[-1]).half().float()
        total[0] += a.shape[1]
        for t in thresholds:
            counts[t] += int((a.abs() >= t).any(0).sum()) if t > 0 else 0

    handles = [m.register_forward_pre_hook(hook) for _, m in linears(model)]
    with torch.no_grad():
        for w in range(windows):
            model(ids[:, w * seqlen:(w + 1) * seqlen])
    for h in handles:
        h.remove()
    return {f"{t:g}": counts[t] / total[0] for t in thresholds}


def ppl(model, ids, seqlen, windows) -> float:
    from llmquant.eval.perplexity import perplexity

    return perplexity(model, ids, seqlen, windows, 1, "cpu").ppl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, required=True, help="the de-quantized base model directory")
    ap.add_argument("--tokens", type=Path, required=True, help="safetensors with input_ids [1, N] (the eval stream)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bnb_int8_gap"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", nargs="*", help="measure only these rows")
    ap.add_argument("--thresholds", nargs="*", type=float, default=[],
                    help="also measure bnb LLM.int8 at these thresholds (rows bnb-int8-t<T>)")
    ap.add_argument("--nf4", action="store_true",
                    help="also measure NF4 as evaluated (bf16 CPU kernel where available) and with fp32 matmuls")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from llmquant.formats.load import load_checkpoint
    from llmquant.loading.runtime import set_threads
    from llmquant.quantize.base import QuantizeContext
    from llmquant.quantize.bnb.quantizer import BnbQuantizer
    from llmquant.quantize.bnb.config import BnbVariant

    set_threads()
    ids = load_file(args.tokens)["input_ids"]
    tok = AutoTokenizer.from_pretrained(args.base)
    rows: dict[str, dict] = {}
    stats: dict = {}

    def bnb(threshold: float):
        d = args.work / f"int8-t{threshold:g}"
        if not (d / "model.safetensors").exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            v = BnbVariant(name="x", method="bnb", mode="int8", threshold=threshold)
            BnbQuantizer().quantize(None, v, None, d, QuantizeContext(tokenizer=tok, model_dir=args.base))
        return load_checkpoint(d, "float32", "cpu")[0]

    plan = {
        "dense": lambda: load_base(args.base, False),
        "fp16-store": lambda: load_base(args.base, True),
        "fp16-inputs": lambda: (m := load_base(args.base, True), patch(m, fp16_inputs))[0],
        "int8-weights": lambda: (m := load_base(args.base, True), patch(m, int8_weights))[0],
        "int8-emulated": lambda: (m := load_base(args.base, True), patch(m, int8_emulated(6.0, stats)))[0],
        "bnb-int8": lambda: bnb(6.0),
        "bnb-int8-t0": lambda: bnb(0.0),
    }
    def nf4(fused_cpu_kernel: bool):
        import bitsandbytes as bnb_lib

        d = args.work / "nf4"
        if not (d / "model.safetensors").exists():
            v = BnbVariant(name="x", method="bnb", mode="nf4")
            BnbQuantizer().quantize(None, v, None, d, QuantizeContext(tokenizer=tok, model_dir=args.base))
        m = load_checkpoint(d, "float32", "cpu")[0]
        for mod in m.modules():
            if isinstance(mod, bnb_lib.nn.Linear4bit) and not fused_cpu_kernel:
                mod.support_avx512bf16_for_cpu = False  # dequantize + fp32 matmul instead of the bf16 kernel
        return m

    if args.nf4:
        plan["bnb-nf4"] = lambda: nf4(True)
        plan["bnb-nf4-fp32-matmul"] = lambda: nf4(False)
    extra = {f"bnb-int8-t{t:g}" for t in args.thresholds} | ({"bnb-nf4", "bnb-nf4-fp32-matmul"} if args.nf4 else set())
    for t in args.thresholds:
        plan[f"bnb-int8-t{t:g}"] = (lambda t=t: bnb(t))
    for name, build in plan.items():
        if args.only and name not in args.only and name not in extra:
            continue
        t0 = time.perf_counter()
        model = build()
        with torch.no_grad():
            value = ppl(model, ids, args.seqlen, args.windows)
        rows[name] = {"ppl": value, "seconds": time.perf_counter() - t0}
        print(f"{name:14s} ppl {value:8.4f}  ({rows[name]['seconds']:.0f} s)", flush=True)
        del model
    base = rows.get("dense", {}).get("ppl")
    for r in rows.values():
        r["delta_pct_vs_dense"] = None if base is None else (r["ppl"] / base - 1) * 100
    if stats.get("calls"):
        rows["int8-emulated"]["fp_columns_per_call"] = stats["cols"] / stats["calls"]
        rows["int8-emulated"]["fp_column_share"] = stats["cols"] / stats["width"]
    shares = outlier_share(load_base(args.base, True), ids, args.seqlen, 4, sorted({6.0, 0.0, *args.thresholds}))
    print("share of input columns kept in floating point (first 4 windows):", shares, flush=True)
    result = {"date": str(date.today()), "machine": platform.machine(), "threads": torch.get_num_threads(),
              "fp_column_share_by_threshold": shares,
              "torch": torch.__version__, "protocol": f"wikitext-2 test, {args.windows} x {args.seqlen}, fp32",
              "rows": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
