"""A plan as a table for people, or JSON for scripts."""

from __future__ import annotations

from .build import Plan, gib
from .timing import duration


def render_text(plan: Plan) -> list[str]:
    fp, m = plan.footprint, plan.machine
    lines = [f"model: {plan.model}: {fp.layers} layers, hidden {fp.hidden}, {fp.total_params / 1e9:.2f} B parameters, "
             f"stored {fp.stored_dtype}" + (f" ({gib(fp.weights_on_disk)} on disk)" if fp.weights_on_disk else ""),
             f"machine: {gib(m.ram_total)} RAM ({gib(m.ram_available)} free), "
             + (", ".join(f"GPU {i} {gib(g.total)}" for i, g in enumerate(m.gpus)) or "no GPU")
             + f", {gib(m.disk_free)} free disk; {m.cpu}",
             f"compute: {plan.device}, {plan.dtype}",
             "",
             f"{'step':<40} {'host peak':>10} {'GPU peak':>10} {'disk':>10} {'time':>9}  fits"]
    for s in plan.steps:
        fits = "NO" if s.problem else ("tight" if s.warning else "yes")
        dev = gib(s.device) if s.device is not None else "-"
        disk = gib(s.disk) if s.disk else "-"
        took = duration(s.seconds, s.seconds_upper) if s.seconds is not None else "-"
        lines.append(f"{s.name:<40} {gib(s.host):>10} {dev:>10} {disk:>10} {took:>9}  {fits}")
        biggest = sorted(((k, v) for k, v in s.terms.items() if not k.startswith("(")), key=lambda kv: -kv[1])[:3]
        if len(biggest) > 1:
            lines.append(f"{'':<4}largest terms: " + ", ".join(f"{k} {gib(v)}" for k, v in biggest))
    lines += ["", f"disk written by the run: ~{gib(plan.disk_total)} of {gib(m.disk_free)} free",
              "All figures are estimates (llmquant/plan/memory.py says what each counts and how they compare "
              "with measured runs; times are scaled from per-block times measured on this CPU model, "
              "plan/timing.py, and '-' where none was)."]
    for s in plan.steps:
        if s.note:
            lines.append(f"{s.name}: {s.note}")
        if s.warning:
            lines.append(f"warning: {s.name}: {s.warning}")
    lines += [f"does not fit: {p}" for p in plan.problems]
    return lines


def render_json(plan: Plan) -> dict:
    fp, m = plan.footprint, plan.machine
    return {
        "model": plan.model, "device": plan.device, "dtype": plan.dtype,
        "footprint": {"layers": fp.layers, "hidden": fp.hidden, "intermediate": fp.intermediate,
                      "vocab": fp.vocab, "params": fp.total_params, "stored_dtype": fp.stored_dtype,
                      "weights_on_disk_bytes": fp.weights_on_disk},
        "machine": {"ram_total_bytes": m.ram_total, "ram_available_bytes": m.ram_available,
                    "disk_free_bytes": m.disk_free, "gpus": [{"total_bytes": g.total, "free_bytes": g.free}
                                                             for g in m.gpus], "cpu": m.cpu},
        "steps": [{"step": s.name, "host_peak_bytes": s.host, "device_peak_bytes": s.device, "disk_bytes": s.disk,
                   "terms": s.terms, "seconds": s.seconds, "seconds_upper_bound": s.seconds_upper, "fits": s.problem is None, "problem": s.problem, "warning": s.warning,
                   "note": s.note}
                  for s in plan.steps],
        "disk_total_bytes": plan.disk_total,
        "problems": plan.problems,
        "estimates": True,
    }
