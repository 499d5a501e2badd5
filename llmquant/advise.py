"""The precision/method advisor: pure decision rules.

`recommend(situation)` answers "what should I try, in what order?" from the deployment target,
the accuracy tolerance, the model's current size and latency and the goal. `explain(results)`
reads a finished run's results.json (classic or LLM) and says what the measurements mean.

The rules (each has a test):
- already within every goal given → don't quantize;
- under ~5 MB → don't quantize (savings are small, overheads dominate), unless a size goal
  still needs meeting;
- LLMs → weight-only methods (RTN/GPTQ/AWQ): activation outliers break INT8 activations;
- GPU → FP16 first, INT8 static only if FP16 is not fast enough, QAT if static loses too much;
- CPU/edge → the ladder dynamic → static → QAT (CNNs start at static: dynamic INT8 covers
  Linear layers only); mixed precision when a few layers carry the loss;
- INT4 only for extreme memory limits (extreme-edge, or a size goal INT8 cannot reach).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import UserError

Target = Literal["cpu", "gpu", "edge", "extreme-edge"]
Arch = Literal["cnn", "transformer", "rnn", "llm", "other"]
TARGETS = ("cpu", "gpu", "edge", "extreme-edge")
ARCHS = ("cnn", "transformer", "rnn", "llm", "other")
SMALL_MODEL_MB = 5.0
INT8_SIZE_RATIO = 4.0  # fp32 → int8 weights
ACTIVATION_HINTS = ("dynamic", "w8a8", "a8", "smoothquant", "static", "qat")


@dataclass(frozen=True)
class Situation:
    target: Target
    tolerance_pts: float = 1.0  # accuracy points (classifiers) or perplexity % (LLMs) you can give up
    size_mb: float | None = None
    latency_ms: float | None = None
    size_goal_mb: float | None = None
    latency_goal_ms: float | None = None
    arch: Arch = "cnn"


@dataclass(frozen=True)
class Step:
    method: str  # a recipe method name, or "none"
    why: str


@dataclass(frozen=True)
class Advice:
    quantize: bool
    steps: list[Step]
    summary: str
    notes: list[str] = field(default_factory=list)


def _goals_met(s: Situation) -> bool | None:
    """True when every goal given is met, False when one is not, None when none is given/known."""
    pairs = [(s.latency_ms, s.latency_goal_ms), (s.size_mb, s.size_goal_mb)]
    given = [(cur, goal) for cur, goal in pairs if goal is not None]
    if not given or any(cur is None for cur, _ in given):
        return None
    return all(cur <= goal for cur, goal in given)


def _needs_int4(s: Situation) -> bool:
    if s.target == "extreme-edge":
        return True
    return bool(s.size_goal_mb and s.size_mb and s.size_mb / INT8_SIZE_RATIO > s.size_goal_mb)


def recommend(s: Situation) -> Advice:
    if _goals_met(s):
        return Advice(False, [Step("none", "the model already meets every latency and size goal given")],
                      "don't quantize: it is already fast and small enough")
    size_short = bool(s.size_goal_mb and s.size_mb and s.size_mb > s.size_goal_mb)
    if s.size_mb is not None and s.size_mb < SMALL_MODEL_MB and not size_short:
        return Advice(False, [Step("none", f"{s.size_mb:g} MB is under ~{SMALL_MODEL_MB:g} MB: quantization saves "
                                            "little memory and a small model's latency is dominated by overheads "
                                            "(framework calls, (de)quantizing), not arithmetic")],
                      "don't quantize: the model is too small to gain; try a faster runtime (ONNX Runtime) instead")
    notes: list[str] = []
    steps: list[Step] = []
    if s.arch == "llm":
        steps.append(Step("rtn", "weight-only INT8 (RTN W8) first: LLM activations have outlier channels, so "
                                 "INT8 activations (dynamic or static) wreck perplexity; weights quantize well"))
        steps.append(Step("gptq", "weight-only INT4 with GPTQ or AWQ when memory matters: 4x smaller than fp16 "
                                  "with a small perplexity cost"))
        if s.target == "gpu":
            notes.append("on a GPU keep activations in FP16/BF16; INT4 weight-only kernels (Marlin, vLLM) are fast")
        return Advice(True, steps, "LLM: weight-only quantization; never dynamic INT8 of activations", notes)
    if s.target == "gpu":
        steps.append(Step("cast", "FP16 first: GPUs run it natively, half the size, accuracy essentially unchanged"))
        steps.append(Step("static", "INT8 static (calibrated) only if FP16 is not fast enough"))
    else:
        if s.arch == "cnn":
            notes.append("dynamic INT8 covers Linear (and LSTM) layers only; a CNN's time is in its convolutions, "
                         "so start at static")
        else:
            steps.append(Step("dynamic", "dynamic INT8 first: no calibration data needed, Linear weights 4x smaller, "
                                         "activations quantized at run time"))
        steps.append(Step("static", "static INT8 with a calibration split (100-1000 samples): activations "
                                    "quantized ahead of time, the fastest on CPUs with VNNI/AMX"))
        if s.target == "edge":
            steps.append(Step("onnx_static", "for edge runtimes: ONNX Runtime static (QDQ) from the same calibration "
                                             "split"))
    steps.append(Step("qat", f"if static loses more than {s.tolerance_pts:g} pts: QAT fine-tunes with fake "
                             "quantization and recovers most of it"))
    steps.append(Step("mixed", "or keep the few most sensitive layers in float (mixed precision)"))
    if _needs_int4(s):
        steps.append(Step("int4", "INT4 weights only for extreme memory limits: INT8 gives about 4x and that is "
                                  "not enough here; expect a larger accuracy loss and validate it (torchao "
                                  "Int4WeightOnlyConfig; not a classic recipe method)"))
    if s.tolerance_pts < 1.0:
        notes.append(f"tight tolerance ({s.tolerance_pts:g} pts): plan for QAT or mixed precision from the start")
    first = steps[0].method
    return Advice(True, steps, f"{s.target}: start with {first}, then go down the ladder only as far as needed", notes)


# -- explaining a finished run -------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def quantizes_activations(method: str, config: dict | None = None) -> bool:
    """Does an LLM variant quantize activations (not weight-only)?"""
    cfg = config or {}
    if "activations" in cfg or cfg.get("act_bits") or cfg.get("input_activations"):
        return True
    m = method.lower()
    return any(h in m for h in ACTIVATION_HINTS)


def explain_classic(results: dict) -> list[str]:
    base = results["baseline"]["result"]
    tol = (results.get("select") or {}).get("max_loss_pts", 1.0)
    lines: list[str] = []
    by_method: dict[str, dict] = {}
    for v in results.get("variants", []):
        r, name = v["result"], v["name"]
        by_method.setdefault(v["method"], v)
        if r.get("nonfinite"):
            lines.append(f"{name}: NaN/Inf in its outputs: broken, do not deploy")
            continue
        loss = base["metric"] - r["metric"]
        speed = _ratio(base.get("latency_ms_median"), r.get("latency_ms_median"))
        smaller = _ratio(base.get("size_bytes"), r.get("size_bytes"))
        gain = f"{speed:.1f}x at batch 1" if speed else "no latency measured"
        size = "" if not smaller else f", {smaller:.1f}x smaller" if smaller >= 1 else f", {1 / smaller:.1f}x larger"
        if loss > 3:
            lines.append(f"{name}: lost {loss:.1f} pts ({gain}{size}): reconsider; try QAT or mixed precision")
        elif loss > 2:
            lines.append(f"{name}: lost {loss:.1f} pts ({gain}{size}): try QAT")
        elif speed is not None and speed < 1.0:
            lines.append(f"{name}: {loss:.1f} pts loss but {1 / speed:.1f}x slower at batch 1{size}: at this size "
                         "the runtime's overheads outweigh INT8 arithmetic; deploy only for the size")
        elif loss > tol:
            lines.append(f"{name}: gave {gain} at {loss:.1f} pts loss{size}: over your {tol:g} pts tolerance "
                         "(acceptable by the usual rule if under 2)")
        else:
            verb = "deploy" if (speed or 0) >= 1.2 else "no real speed-up; deploy for the size" if smaller and \
                smaller >= 1.5 else "little to gain"
            lines.append(f"{name}: gave {gain} at {max(loss, 0):.1f} pts loss{size}: {verb}")
    st, qat = by_method.get("static"), by_method.get("qat")
    if st and qat:
        lost = base["metric"] - st["result"]["metric"]
        back = qat["result"]["metric"] - st["result"]["metric"]
        if lost >= 0.5 and back > 0:
            lines.append(f"QAT recovered {back:.1f} of the {lost:.1f} pts static lost")
        elif lost >= 0.5:
            lines.append(f"QAT did not recover what static lost ({lost:.1f} pts): more epochs, or mixed precision")
    w = results.get("winner") or {}
    lines.append(f"recommendation: {'deploy ' + w['name'] if w.get('name') else 'keep the baseline'}"
                 + (f" ({w['reason']})" if w.get("reason") else ""))
    return lines


def explain_llm(results: dict) -> list[str]:
    base = results["baseline"]
    tol = (results.get("select") or {}).get("max_ppl_increase_pct", 2.0)
    bl = (base.get("latency") or {}).get("ttft_ms_median")
    lines: list[str] = []
    for v in results.get("variants", []):
        r = v["result"]
        delta = (r["ppl"] / base["ppl"] - 1) * 100
        cfg = (v.get("quantize") or {}).get("config")
        lat = (r.get("latency") or {}).get("ttft_ms_median")
        speed = _ratio(bl, lat)
        gain = f", {speed:.1f}x first-token latency" if speed else ""
        if delta > 50 and quantizes_activations(v["method"], cfg):
            lines.append(f"{v['name']}: INT8 quantization of activations destroyed this LLM (perplexity "
                         f"{base['ppl']:.1f} → {r['ppl']:.1f}, {delta:+.0f} %): LLM activations have outlier "
                         "channels; use weight-only methods (RTN W8, GPTQ, AWQ)")
        elif delta > 10:
            lines.append(f"{v['name']}: perplexity {delta:+.1f} %: too lossy; use more bits, a smaller group size "
                         "or a calibrated method (GPTQ, AWQ)")
        elif delta > tol:
            lines.append(f"{v['name']}: perplexity {delta:+.1f} %{gain}: over your {tol:g} % tolerance")
        else:
            lines.append(f"{v['name']}: perplexity {delta:+.2f} %{gain}: deploy")
    w = results.get("winner") or {}
    lines.append(f"recommendation: {'deploy ' + w['name'] if w.get('name') else 'keep the baseline'}"
                 + (f" ({w['reason']})" if w.get("reason") else ""))
    return lines


def read_results(path: Path) -> dict:
    """A run's results.json, from the run directory or the file itself."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--run: {file}: no readable results.json ({e})") from None
    if not isinstance(results, dict) or "baseline" not in results or "variants" not in results:
        raise UserError(f"--run: {file}: not the results.json of an llmquant run (no baseline/variants)")
    return results


def explain(results: dict) -> list[str]:
    """What a run's measurements say, one line per variant, then the recommendation."""
    if results.get("kind") == "classic":
        return explain_classic(results)
    return explain_llm(results)
