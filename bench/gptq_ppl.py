"""Perplexity of RTN and GPTQ variants of SmolLM2-135M on the quick protocol, without the
pipeline's latency runs and isolated evaluations (what `llmquant run recipes/smollm2-wikitext.yaml`
reports, through the same quantizers, checkpoint writer, loader and perplexity code).

    PYTHONPATH=. python bench/gptq_ppl.py gptq-w4-g64 rtn-w4-g64 gptq-w3-g64 rtn-w3-g64
    PYTHONPATH=. python bench/gptq_ppl.py --threads 1 gptq-w3-g64      # on a crowded machine

Variant names: {rtn,gptq,gptq-plain,gptq-act,signround}-w{2,3,4,8}-g{N} (gptq: our defaults, group-aware
reordering on; gptq-plain: no reordering; gptq-act: desc_act; signround: --iters, --batch-size);
`baseline` is the fp32 model;
`path:DIR` scores a checkpoint that is already there.
Calibration: 128 x 512 crops of wiki.valid.tokens, seed 0; eval: wikitext-2 test, first 64
windows of 512 tokens, fp32; the checkpoints are written (unquantized tensors in fp16, as the
pipeline does) and read back with our loader before scoring.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # appended: bench/kernels.py must not shadow the `kernels` package

from gptq_cpu import CACHE, CALIB_CORPUS, EVAL_CORPUS  # noqa: E402


def variant_for(name: str, solver: dict, signround: dict):
    from llmquant.quantize.gptq.config import GPTQVariant
    from llmquant.quantize.rtn.config import RTNVariant
    from llmquant.quantize.signround.config import SignRoundVariant

    m = re.fullmatch(r"(rtn|gptq|gptq-plain|gptq-act|signround)-w(\d)-g(-?\d+)", name)
    if not m:
        raise SystemExit(f"unknown variant {name!r}")
    kind, bits, gs = m.group(1), int(m.group(2)), int(m.group(3))
    if kind == "rtn":
        return RTNVariant(name=name, method="rtn", bits=bits, group_size=gs)
    if kind == "signround":
        return SignRoundVariant(name=name, method="signround", bits=bits, group_size=gs, **signround)
    return GPTQVariant(name=name, method="gptq", bits=bits, group_size=gs,
                       act_group_aware=kind != "gptq-plain", desc_act=kind == "gptq-act", **solver)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--out", type=Path, default=CACHE / "ppl")
    p.add_argument("--grid", help="GPTQ grid: mse or minmax (default: the variant's, mse)")
    p.add_argument("--precision", help="GPTQ Hessians and solve: float32 or float64 (default: auto, float64 on a CPU)")
    p.add_argument("--iters", type=int, help="SignRound: steps per block (default: the variant's, 200)")
    p.add_argument("--lr", type=float, help="SignRound: step of the rounding offsets (default: 1/iters)")
    p.add_argument("--batch-size", type=int, help="SignRound: samples per step (default: the variant's, 8)")
    a = p.parse_args()

    import torch

    from llmquant.data import calibration_crops, tokenize
    from llmquant.eval.perplexity import perplexity
    from llmquant.formats.load import load_checkpoint
    from llmquant.loading.models import load_hf_model, load_tokenizer
    from llmquant.loading.runtime import set_threads
    from llmquant.loading.sources import materialize_base, resolve_source
    from llmquant.quantize import get_quantizer
    from llmquant.quantize.base import CalibrationSet, QuantizeContext

    set_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    base = materialize_base(resolve_source("smollm2-demo", ROOT), CACHE / "smollm2-base")
    tok = load_tokenizer(base)
    calib = CalibrationSet(calibration_crops(tokenize(tok, CALIB_CORPUS.read_text(encoding="utf-8")),
                                             a.n_samples, 512, 0), f"wiki.valid-{a.n_samples}x512-seed0")
    ids = tokenize(tok, EVAL_CORPUS.read_text(encoding="utf-8"))
    for name in a.variants:
        t0 = time.perf_counter()
        if name == "baseline":
            path, q_s = base, 0.0
        elif name.startswith("path:"):  # a checkpoint made elsewhere (e.g. by bench/gptq_cpu.py)
            path, q_s = Path(name[5:]), 0.0
        else:
            v = variant_for(name, {k: v for k, v in (("grid", a.grid), ("precision", a.precision)) if v},
                            {k: v for k, v in (("iters", a.iters), ("batch_size", a.batch_size), ("lr", a.lr)) if v is not None})
            model = load_hf_model(base, "float32", "cpu")
            path = a.out / name
            path.mkdir(parents=True, exist_ok=True)
            res = get_quantizer(v.method).quantize(model, v, calib, path, QuantizeContext(device="cpu", tokenizer=tok))
            (a.out / f"{name}.report.json").write_text(json.dumps(res.layers, indent=1))
            del model
            q_s = time.perf_counter() - t0
        model, _, _ = load_checkpoint(path, "float32", "cpu")
        with torch.no_grad():
            r = perplexity(model, ids, 512, a.eval_windows)
        print(json.dumps({"variant": name, "ppl": round(r.ppl, 4), "tokens_scored": r.tokens_scored,
                          "quantize_s": round(q_s, 1), "threads": torch.get_num_threads(),
                          "grid": a.grid or "default", "precision": a.precision or "default",
                          "iters": a.iters, "batch_size": a.batch_size, "lr": a.lr}), flush=True)


if __name__ == "__main__":
    main()
