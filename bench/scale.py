"""Proof of scale: quantizing Llama-2-7B-shaped models block by block on this machine.

    PYTHONPATH=. python bench/scale.py                                   # 2, 4, 8 layers x rtn, gptq, awq
    PYTHONPATH=. python bench/scale.py --layers 2 8 --methods rtn gptq   # fewer runs
    PYTHONPATH=. python bench/scale.py --runs rtn:2,8 gptq:2,8 awq:2      # per method
    PYTHONPATH=. python bench/scale.py --runs rtn:8 --eval                # also evaluate each checkpoint
    PYTHONPATH=. python bench/scale.py --runs signround:2,4 --iters 4     # SignRound: few steps (memory, s/step)

Models: synthetic Llamas with the layer shapes of Llama-2-7B (hidden 4096, intermediate 11008,
32 heads, 32 KV heads), random weights (normal, std 0.02; norms 1) stored in bf16 as a sharded
safetensors checkpoint (2 GB shards, with model.safetensors.index.json), the tokenizer of the
demo model (SmolLM2, so the vocabulary is its 49152 tokens rather than Llama-2's 32000).
Each (layers, method) is quantized in its own process, from the files, exactly as `llmquant run`
does it (quantize/lazy.py skeleton, one block resident, streamed checkpoint): W4 g128,
calibration `--n-samples` x `--seqlen` random crops (seed 0) of wikitext-2 valid. Recorded per
run: wall seconds of the quantize step, its peak resident memory (VmHWM reset at the step's
start), seconds per block. The 32-layer (7B) projection extends the measured growth per
layer from the smallest to the largest model, and times the median block by 32.

Results go to bench/results/scale-<date>.md. Random weights make GPTQ/AWQ solve as much as on a
real model (same shapes, same calibration tokens); their perplexity would be meaningless, so
none is measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # appended: bench/kernels.py must not shadow the `kernels` package
sys.path.insert(0, str(ROOT))
from common import WIKI_VALID, machine, smollm2_dir  # noqa: E402

HIDDEN, INTERMEDIATE, HEADS = 4096, 11008, 32
FULL_LAYERS = 32


def synthetic_llama(out: Path, layers: int, tokenizer_dir: Path) -> Path:
    """A Llama-2-7B-shaped model with `layers` blocks, written tensor by tensor (never whole in memory)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig

    from llmquant.formats.stream import StreamedShards

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tok)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16",
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    tmp = out.with_name(out.name + ".partial")
    g = torch.Generator().manual_seed(layers)
    shards = StreamedShards(tmp, max_shard=2 << 30)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    shards.add("model.embed_tokens.weight", rand(vocab, HIDDEN))
    for i in range(layers):
        p = f"model.layers.{i}"
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shards.add(f"{p}.self_attn.{n}.weight", rand(HIDDEN, HIDDEN))
        shards.add(f"{p}.mlp.gate_proj.weight", rand(INTERMEDIATE, HIDDEN))
        shards.add(f"{p}.mlp.up_proj.weight", rand(INTERMEDIATE, HIDDEN))
        shards.add(f"{p}.mlp.down_proj.weight", rand(HIDDEN, INTERMEDIATE))
        shards.add(f"{p}.input_layernorm.weight", torch.ones(HIDDEN, dtype=torch.bfloat16))
        shards.add(f"{p}.post_attention_layernorm.weight", torch.ones(HIDDEN, dtype=torch.bfloat16))
    shards.add("model.norm.weight", torch.ones(HIDDEN, dtype=torch.bfloat16))
    shards.add("lm_head.weight", rand(vocab, HIDDEN))
    shards.finish()
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def child(args: argparse.Namespace) -> None:
    """One quantization, in this process; prints its measurements as JSON."""
    import torch

    from llmquant.data import calibration_crops
    from llmquant.loading.models import load_tokenizer
    from llmquant.quantize.base import CalibrationSet, QuantizeContext
    from llmquant.quantize.lazy import lazy_model
    from llmquant.quantize.measure import measure_step
    from llmquant.quantize.awq.config import AWQVariant
    from llmquant.quantize.gptq.config import GPTQVariant
    from llmquant.quantize.rtn.config import RTNVariant

    model_dir = Path(args.model)
    tok = load_tokenizer(model_dir)
    ids = torch.tensor([tok(WIKI_VALID.read_text()).input_ids])
    crops = calibration_crops(ids, args.n_samples, args.seqlen, 0, "wikitext-2 valid")
    common = {"bits": 4, "group_size": 128}
    if args.method == "rtn":
        from llmquant.quantize.rtn.quantizer import RTNQuantizer as Q
        variant = RTNVariant(name="rtn", method="rtn", **common)
    elif args.method == "gptq":
        from llmquant.quantize.gptq.quantizer import GPTQQuantizer as Q
        variant = GPTQVariant(name="gptq", method="gptq", **common)
    elif args.method == "signround":
        from llmquant.quantize.signround.config import SignRoundVariant
        from llmquant.quantize.signround.quantizer import SignRoundQuantizer as Q
        variant = SignRoundVariant(name="signround", method="signround", iters=args.iters, **common)
    else:
        from llmquant.quantize.awq.quantizer import AWQQuantizer as Q
        variant = AWQVariant(name="awq", method="awq", **common)
    model, blocks = lazy_model(model_dir)
    with measure_step(args.device) as m:
        summary = Q().quantize(model, variant, CalibrationSet(crops, "scale"), Path(args.out),
                               QuantizeContext(device=args.device, tokenizer=tok, blocks=blocks))
    m["block_seconds"] = summary.details.get("block_seconds", [])
    m["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(args.out).glob("*.safetensors"))
    m["calib_dtype"] = summary.details.get("calib_dtype")
    print("RESULT " + json.dumps(m))


EVAL_SEQLEN, EVAL_WINDOWS = 2048, 2


def eval_child(args: argparse.Namespace) -> None:
    """One evaluation (bf16 where this CPU has it, the float32 check of the first window, two
    2048-token windows), in this process; prints the process's peak RSS as JSON."""
    from llmquant.eval.evaluate import EvalJob, evaluate_checkpoint
    from llmquant.loading.runtime import resolve_dtype

    job = EvalJob(checkpoint=args.model, tokens_path=args.tokens, corpus="wikitext-2 valid", corpus_sha256="-",
                  seqlen=EVAL_SEQLEN, max_windows=EVAL_WINDOWS, dtype=resolve_dtype("auto", "cpu"), device="cpu",
                  check_windows=1, check_tolerance_pct=100.0)
    r = evaluate_checkpoint(job)
    print("RESULT " + json.dumps({"eval_peak_rss_bytes": r.peak_rss_bytes, "weights_bytes": r.weights_bytes,
                                  "eval_seconds": r.seconds["total"], "dtype": job.dtype}))


def eval_tokens(work: Path, tokenizer_dir: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from llmquant.loading.models import load_tokenizer

    path = work / "eval-tokens.safetensors"
    if not path.exists():
        ids = load_tokenizer(tokenizer_dir)(WIKI_VALID.read_text()).input_ids[: EVAL_SEQLEN * EVAL_WINDOWS + 1]
        save_file({"input_ids": torch.tensor([ids])}, str(path))
    return path


def evaluate_one(checkpoint: Path, tokens: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--eval-child", "--model", str(checkpoint),
           "--tokens", str(tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"evaluating {checkpoint} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def planned(model: Path, method: str, args) -> dict:
    """What `llmquant plan` estimates for this run's quantize and evaluate steps (this machine)."""
    import tempfile

    from llmquant.plan import plan_for
    from llmquant.recipe import load_recipe

    with tempfile.TemporaryDirectory() as d:
        r = Path(d) / "r.yaml"
        r.write_text(f"model: {{source: {model}, dtype: auto, device: {args.device}}}\n"
                     f"calibration: {{dataset: 'builtin:pydoc', n_samples: {args.n_samples}, seqlen: {args.seqlen}}}\n"
                     f"eval: {{dataset: 'builtin:pydoc', seqlen: {EVAL_SEQLEN}, check_windows: 1, isolate: false}}\n"
                     f"variants: [{{name: v, method: {method}, bits: 4, group_size: 128}}]\n"
                     f"output: {{dir: {d}/run}}\n")
        steps = {s.name: s.host for s in plan_for(load_recipe(r)).steps}
    return {"planned_quantize_bytes": steps["quantize v"], "planned_eval_bytes": steps["evaluate v"],
            "planned_baseline_eval_bytes": steps["evaluate baseline"]}


def run_one(model: Path, method: str, out: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", str(model), "--method", method,
           "--out", str(out), "--n-samples", str(args.n_samples), "--seqlen", str(args.seqlen),
           "--device", args.device, "--iters", str(args.iters)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{method} on {model.name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    result["process_seconds"] = round(time.time() - t0, 1)
    return result


def projection(rows: dict[int, dict]) -> tuple[float, float, float]:
    """(peak bytes growth per layer, projected 32-layer peak, projected 32-layer seconds)."""
    lo, hi = min(rows), max(rows)
    per_layer = (rows[hi]["quantize_peak_rss_bytes"] - rows[lo]["quantize_peak_rss_bytes"]) / max(1, hi - lo)
    peak32 = rows[hi]["quantize_peak_rss_bytes"] + per_layer * (FULL_LAYERS - hi)
    blocks = [t for r in rows.values() for t in r["block_seconds"]]
    fixed = statistics.median(r["quantize_seconds"] - sum(r["block_seconds"]) for r in rows.values())
    return per_layer, peak32, FULL_LAYERS * statistics.median(blocks) + fixed


def command(args) -> str:
    if args.runs:
        return "--runs " + " ".join(args.runs)
    return f"--layers {' '.join(map(str, args.layers))} --methods {' '.join(args.methods)}"


def report(results: dict[str, dict[int, dict]], args, started: str) -> str:
    import torch

    gb = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    lines = [f"# Quantizing Llama-2-7B-shaped models block by block ({date.today()})", "",
             f"- machine: {machine()}",
             f"- torch.backends.cpu.get_cpu_capability(): {torch.backends.cpu.get_cpu_capability()}",
             f"- command: `PYTHONPATH=. python bench/scale.py {command(args)} --n-samples {args.n_samples} "
             f"--seqlen {args.seqlen}" + (f" --iters {args.iters}`" if "signround" in args.methods else "`"),
             f"- started {started}; each run in its own process, one at a time",
             "- models: hidden 4096, intermediate 11008, 32 heads (MHA), random bf16 weights on disk, "
             "SmolLM2 tokenizer (vocab 49152), untied lm_head; W4 g128; calibration "
             f"{args.n_samples}x{args.seqlen} crops of wikitext-2 valid (seed 0)",
             "- peak RSS: VmHWM of the quantizing process, reset when the quantize step starts (the "
             "process has imported torch/transformers and built the meta skeleton by then)",
             "- the load average above was taken at the end: well above 2 means other work shared the 2 cores "
             "and the times are indicative",
             "- planned: what `llmquant plan` estimates for the same step on this machine (llmquant/plan/memory.py)",
             "",
             "| method | layers | quantize s | s / block (median) | peak RSS GiB | planned GiB | checkpoint GiB |",
             "|---|---|---|---|---|---|---|"]
    quantized = {m: rows for m, rows in results.items() if not m.startswith("dense")}
    for method, rows in quantized.items():
        for n, r in sorted(rows.items()):
            med = statistics.median(r["block_seconds"]) if r["block_seconds"] else float("nan")
            plan = gb(r["planned_quantize_bytes"]) if "planned_quantize_bytes" in r else "-"
            lines.append(f"| {method} | {n} | {r['quantize_seconds']:.1f} | {med:.1f} | "
                         f"{gb(r['quantize_peak_rss_bytes'])} | {plan} | {gb(r['checkpoint_bytes'])} |")
    evals = [(m, n, r) for m, rows in results.items() for n, r in sorted(rows.items()) if "eval_peak_rss_bytes" in r]
    if evals:
        lines += ["", f"## Evaluating the checkpoints ({EVAL_WINDOWS} windows of {EVAL_SEQLEN} tokens, "
                  f"{evals[0][2]['dtype']}, the float32 check of the first window; each in its own process)", "",
                  "| checkpoint | layers | eval peak RSS GiB (whole process) | planned GiB | weights as loaded GiB | "
                  "eval s |", "|---|---|---|---|---|---|"]
        for m, n, r in evals:
            plan = r["planned_baseline_eval_bytes"] if m.startswith("dense") else r["planned_eval_bytes"]
            lines.append(f"| {m} | {n} | {gb(r['eval_peak_rss_bytes'])} | {gb(plan)} | {gb(r['weights_bytes'])} | "
                         f"{r['eval_seconds']:.0f} |")
    lines += ["", "## Depth and the 32-layer (7B) projection", "",
              "| method | peak(max layers) / peak(min layers) | growth per layer MB | projected 7B peak GiB | "
              "projected 7B quantize time |", "|---|---|---|---|---|"]
    for method, rows in quantized.items():
        if len(rows) < 2:
            continue
        lo, hi = min(rows), max(rows)
        ratio = rows[hi]["quantize_peak_rss_bytes"] / rows[lo]["quantize_peak_rss_bytes"]
        per_layer, peak32, secs32 = projection(rows)
        lines.append(f"| {method} | {ratio:.3f} ({hi} vs {lo}) | {per_layer / 1e6:.1f} | {gb(peak32)} | "
                     f"{secs32 / 3600:.1f} h ({secs32 / 60:.0f} min) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--eval-child", action="store_true")
    ap.add_argument("--tokens")
    ap.add_argument("--eval", action="store_true", help="also evaluate each checkpoint (and the dense model) in its "
                    "own process: peak RSS against the plan's estimate")
    ap.add_argument("--model")
    ap.add_argument("--method")
    ap.add_argument("--out")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--methods", nargs="+", default=["rtn", "gptq", "awq"])
    ap.add_argument("--runs", nargs="+", help="method:layers,layers,... (instead of --layers x --methods)")
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=4, help="signround: steps per block (its time grows linearly)")
    ap.add_argument("--work", default="/tmp/llmquant-scale")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / f"scale-{date.today()}.md"))
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.eval_child:
        return eval_child(args)
    from llmquant.runs import atomic_write_text

    started = time.strftime("%H:%M UTC", time.gmtime())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = smollm2_dir(work)
    plan = {m: list(args.layers) for m in args.methods}
    if args.runs:
        plan = {r.split(":")[0]: [int(x) for x in r.split(":")[1].split(",")] for r in args.runs}
        args.methods, args.layers = list(plan), sorted({n for ns in plan.values() for n in ns})
    results: dict[str, dict[int, dict]] = {m: {} for m in plan}
    tokens = eval_tokens(work, tokenizer_dir) if args.eval else None
    for n in sorted({n for ns in plan.values() for n in ns}):
        model = synthetic_llama(work / f"llama7b-shape-{n}l", n, tokenizer_dir)
        if args.eval:
            base = evaluate_one(model, tokens)
            results.setdefault("dense (baseline)", {})[n] = base | planned(model, "rtn", args)
            print(f"dense {n} layers: eval peak {base['eval_peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
        for method in [m for m in plan if n in plan[m]]:
            out = work / f"q-{method}-{n}l"
            r = run_one(model, method, out, args) | planned(model, method, args)
            if args.eval:
                r |= evaluate_one(out, tokens)
            results[method][n] = r
            print(f"{method} {n} layers: {r['quantize_seconds']:.0f} s, peak {r['quantize_peak_rss_bytes'] / 2**30:.2f} GiB, "
                  f"blocks {r['block_seconds']}", flush=True)
            atomic_write_text(Path(args.results), report(results, args, started))
            subprocess.run(["rm", "-rf", str(out)])
    print(Path(args.results).read_text())


if __name__ == "__main__":
    main()
