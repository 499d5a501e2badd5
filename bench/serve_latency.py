"""First-token latency and decode speed through the OpenAI streaming API, for the baseline and
the quantized variants of a run directory, each served in turn by the same engine.

    python bench/serve_latency.py RUN_DIR [--engine local|vllm|auto] [--prompt-tokens 128]
        [--decode-tokens 32] [--repeats 5] [--warmup 1] [--variants a,b] [--out FILE]

Prompts are the run's own evaluation prompts (`cache/eval-tokens.safetensors`, evenly spaced
over the token stream, as `eval/latency.py` picks them), else CPython's pydoc text tokenised by
the baseline's tokenizer; the same token ids go to every variant. Ratios are against the baseline
served in the same invocation. The in-process numbers the run recorded (`results.json`) are shown
beside them, so the HTTP overhead is visible. Writes a Markdown table to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import machine  # noqa: E402


def prompts_for(run_dir: Path, baseline_dir: Path, n: int, length: int) -> tuple[str, list[list[int]]]:
    from safetensors.torch import load_file

    from llmquant.eval.latency import prompts_from_stream

    cached = run_dir / "cache" / "eval-tokens.safetensors"
    if cached.exists():
        ids, label = load_file(str(cached))["input_ids"], "the run's evaluation token stream"
    else:
        from llmquant.data import _pydoc_text
        from llmquant.loading.models import load_tokenizer

        ids = load_tokenizer(baseline_dir)(_pydoc_text("test", "bench"), return_tensors="pt").input_ids
        label = "builtin:pydoc[test]"
    return label, [p.reshape(-1).tolist() for p in prompts_from_stream(ids, n, length)]


def main() -> None:
    from llmquant.recipe import ServeSpec
    from llmquant.serve.artifact import resolve_target
    from llmquant.serve.client import openai_client
    from llmquant.serve.engine import resolve_engine, start_background
    from llmquant.serve.http_latency import measure_http_latency

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--engine", default="local", choices=["local", "vllm", "auto"])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all); baseline always runs")
    ap.add_argument("--dtype", default="auto", help="built-in server dtype (auto: bf16 on CPUs that have it)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    results = json.loads((args.run_dir / "results.json").read_text())
    names = [v["name"] for v in results["variants"]]
    if args.variants:
        names = [n for n in names if n in args.variants.split(",")]
    engine = resolve_engine(args.engine)
    spec = ServeSpec(engine=engine, local={"dtype": args.dtype, "device": "auto", "max_tokens": 4096})
    baseline = resolve_target(args.run_dir, "baseline")
    label, prompts = prompts_for(args.run_dir, baseline.checkpoint, args.repeats, args.prompt_tokens)
    recorded = {"baseline": results["baseline"]} | {v["name"]: v["result"] for v in results["variants"]}

    rows = []
    for name in ["baseline", *names]:
        target = resolve_target(args.run_dir, name)
        print(f"{name}: serving {target.checkpoint} with the {engine} engine", file=sys.stderr, flush=True)
        with start_background(target, spec, engine, tag="bench") as srv:
            lat = measure_http_latency(openai_client(srv.base_url), srv.model_name, prompts, args.decode_tokens,
                                       args.warmup)
        rows.append((name, target.info.format, lat, (recorded.get(name) or {}).get("latency")))
        print(f"  TTFT {lat.ttft_ms_median:.1f} ms, decode {lat.decode_tok_s:.2f} tok/s", file=sys.stderr, flush=True)

    base = rows[0][2]
    cmd = "python bench/serve_latency.py " + shlex.join(sys.argv[1:])
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    lines = [f"# Latency through the OpenAI API: {args.run_dir.name}", "",
             f"- date: {date.today()}", f"- machine: {machine()}", f"- llmquant commit: {rev}", f"- command: `{cmd}`",
             f"- engine: {engine} (dtype {args.dtype} for the built-in server); prompts: {len(prompts)} x "
             f"{args.prompt_tokens} tokens from {label}; {args.decode_tokens + 1} tokens generated per request "
             f"(greedy, ignore_eos); {args.warmup} warm-up run(s) discarded; batch 1, one request at a time",
             "- TTFT: request sent to first streamed token; ITL: gap between streamed tokens; decode: "
             "(tokens - 1) / (last - first token). Ratios vs the baseline served in this invocation.",
             "- in-process columns: what the run recorded (results.json), model called directly, another time.", "",
             "| variant | format | TTFT ms (median) | TTFT ms (p90) | ITL ms (median) | decode tok/s | TTFT vs baseline "
             "| decode vs baseline | in-process TTFT ms | in-process decode tok/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, fmt, lat, rec in rows:
        lines.append(
            f"| {name} | {fmt} | {lat.ttft_ms_median:.1f} | {lat.ttft_ms_p90:.1f} | {lat.itl_ms_median or 0:.1f} | "
            f"{lat.decode_tok_s:.2f} | {lat.ttft_ms_median / base.ttft_ms_median:.2f}x | "
            f"{lat.decode_tok_s / base.decode_tok_s:.2f}x | "
            + (f"{rec['ttft_ms_median']:.1f} | {rec['decode_tok_s']:.2f} |" if rec else "– | – |"))
    out = args.out or ROOT / "bench" / "results" / f"serve_latency-{args.run_dir.name}-{engine}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
