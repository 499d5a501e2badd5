"""How well the per-layer sensitivities predict the measured model: for every GPTQ-format variant
of a finished run (uniform GPTQ/RTN and mixed), the predicted cost of its allocation (the sum,
over allocation units, of the sensitivity JSON's cost at the unit's bits and group size, read from
the checkpoint's own tensors and `dynamic` rules) against what the run measured (mean KLD where
the protocol has it, and the perplexity increase), with Spearman's rank correlation.

    PYTHONPATH=. python bench/sensitivity_check.py ../runs/smollm2-mixed
    PYTHONPATH=. python bench/sensitivity_check.py ../runs/smollm2-mixed --sensitivity FILE --out F.md
    PYTHONPATH=. python bench/sensitivity_check.py RUN --cost nsr     # the other weighting of the same JSON

`--cost` picks the option field summed: `cost` (the JSON's own weighting), `nsr` (noise-to-signal of
each layer's outputs) or `fisher` (Fisher-weighted: a predicted rise of the mean per-token loss in
nats, which the table puts beside the measured ln(ppl / baseline ppl)).

The sensitivity JSON defaults to the one a mixed variant of the run recorded in its summary
(`allocation.sensitivity`), else the newest `sensitivity-*.json` in the run's cache. A unit whose
setting the JSON has no option for (e.g. RTN W8 g64 checked against candidates without g64)
makes that variant unpredictable; it is listed and left out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # appended: bench/ first on sys.path would shadow packages (bench/kernels.py)


def result_of(path: Path) -> dict:
    """The EvalResult fields of a cached result file ({"key", "result": {...}})."""
    data = json.loads(path.read_text())
    return data.get("result", data)


def ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks."""
    rx, ry = ranks(x), ranks(y)
    n = len(x)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx and vy else float("nan")


def predicted_cost(ckpt: Path, sens: dict, field: str = "cost") -> tuple[float | None, str]:
    from llmquant.formats.load import inspect_checkpoint
    from llmquant.formats.modules import checkpoint_modules

    info = inspect_checkpoint(ckpt)
    if info.method != "gptq":
        return None, f"{info.method} checkpoint"
    mods, _ = checkpoint_modules(ckpt, info.method, info.quant_config)
    setting = {m.name: (m.bits, m.group_size) for m in mods}
    total = 0.0
    for unit in sens["layers"]:
        names = unit.get("modules") or [unit["name"]]
        got = {setting.get(n) for n in names}
        if len(got) != 1 or None in got:
            return None, f"{unit['name']}: settings {sorted(map(str, got))}"
        bits, group = got.pop()
        opt = [o for o in unit["options"] if (o["bits"], o["group_size"]) == (bits, group)]
        if not opt:
            return None, f"{unit['name']}: no option for {bits} bits group {group}"
        if field not in opt[0]:
            return None, f"{unit['name']}: the JSON has no '{field}' per option"
        total += opt[0][field]
    return total, ""


def find_sensitivity(run: Path) -> Path:
    for summary in sorted(run.glob("variants/*/summary.json")) + sorted(run.glob("variants/*/manifest.json")):
        s = json.loads(summary.read_text())
        for d in (s, s.get("summary", {}), s.get("details", {})):
            p = (d.get("allocation") or {}).get("sensitivity") if isinstance(d, dict) else None
            if p and Path(p).exists():
                return Path(p)
    found = sorted(run.glob("cache/**/sensitivity*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"{run}: no sensitivity JSON recorded by a mixed variant or in cache/; pass --sensitivity")
    return found[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run directory (output.dir of a recipe)")
    ap.add_argument("--sensitivity", type=Path, help="the sensitivity JSON (default: see the module doc)")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    ap.add_argument("--cost", choices=("cost", "nsr", "fisher"), default="cost", help="the option field summed")
    args = ap.parse_args()
    sens_path = args.sensitivity or find_sensitivity(args.run)
    sens = json.loads(sens_path.read_text())
    base = result_of(args.run / "baseline/result.json")
    rows, skipped = [], []
    for res in sorted(args.run.glob("variants/*/result.json")):
        name = res.parent.name
        ckpt = res.parent / "checkpoint"
        if not ckpt.exists():
            skipped.append((name, "no checkpoint")); continue
        cost, why = predicted_cost(ckpt, sens, args.cost)
        if cost is None:
            skipped.append((name, why)); continue
        r = result_of(res)
        kld = (r.get("fidelity") or {}).get("kld_mean")
        rows.append((name, cost, 100 * (r["ppl"] / base["ppl"] - 1), kld, r["size_bytes"]))
    lines = [f"sensitivity: {sens_path} (estimate {sens.get('estimate', '?')}, {len(sens['layers'])} units, "
             f"summed field {args.cost!r}: {sens.get('weighting', 'output') if args.cost == 'cost' else args.cost})", "",
             "| variant | predicted cost | ln(ppl / base) | ppl increase % | KLD mean | size MB |",
             "|---|---|---|---|---|---|"]
    for name, cost, dppl, kld, size in sorted(rows, key=lambda r: r[1]):
        nats = math.log1p(dppl / 100)
        lines.append(f"| {name} | {cost:.4g} | {nats:.4f} | {dppl:.2f} | {'' if kld is None else f'{kld:.4f}'} "
                     f"| {size / 1e6:.1f} |")
    lines.append("")
    if len(rows) >= 3:
        lines.append(f"Spearman (predicted cost vs ppl increase), n={len(rows)}: "
                     f"{spearman([r[1] for r in rows], [r[2] for r in rows]):.3f}")
        with_kld = [r for r in rows if r[3] is not None]
        if len(with_kld) >= 3:
            lines.append(f"Spearman (predicted cost vs KLD mean), n={len(with_kld)}: "
                         f"{spearman([r[1] for r in with_kld], [r[3] for r in with_kld]):.3f}")
    else:
        lines.append(f"only {len(rows)} predictable variants: no rank correlation")
    for name, why in skipped:
        lines.append(f"left out {name}: {why}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
