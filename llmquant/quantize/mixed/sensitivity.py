"""Per-layer sensitivity: the predicted cost of quantizing each allocation unit at each candidate
setting, from the calibration Hessians of the *unquantized* model.

For a Linear with weight W and calibration inputs X, H = 2/N XᵀX (gptq_math.accumulate_hessian,
the very Hessian GPTQ solves with). Quantizing W to Q(W) changes its outputs by ΔW Xᵀ, whose mean
squared size is tr(ΔW H ΔWᵀ) (up to the constant 2/N). The cost of one Linear at one setting is
that output error relative to the layer's own output signal, the noise-to-signal ratio

    cost = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)          (= metrics.output_error(W, Q(W), H) ** 2)

with Q = the GPTQ solve at that setting (estimate gptq) or round-to-nearest (estimate rtn). A unit's
cost is the sum over its Linears (q/k/v, gate/up share one setting: vLLM fuses them), and an
allocation's predicted cost is the sum over units. Why relative and why a sum: the raw output errors
of different layers live on different scales (a q_proj output is not a residual-stream update), and
small independent relative noises injected along a network add up at its output (1/SQNR of the
output ~ sum of the layers' 1/SQNR), so the sum of NSRs is a model-level output-error proxy whose
terms are comparable across layers. It is a prediction, checked against measured perplexity/KLD
by the quality search; it needs no forward per candidate (unlike a measured per-layer KL change).

The Hessians are gathered block by block with the shared sequential loop, unstaged and on the
float outputs (nothing is written back), so only one block's activations live at a time. The
result is a JSON file cached by content hash (model, calibration, candidates, estimate, solver),
so a quality search's later attempts reuse it; `seconds` per option is the time its solve took.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ...runs import atomic_write_json, content_hash, read_json
from ..base import CalibrationSet, QuantizeContext
from ..blockrun import BlockResult, BlockRun, InputGroup
from ..gptq.config import SOLVER_FIELDS
from ..gptq.gptq_math import accumulate_hessian
from ..gptq.quantizer import solve_layer
from ..grid import dequantize_groups, group_index, quantize_rtn
from ..lazy import EagerBlocks
from ..sequential import SequentialOptions, default_batch_size, run_sequential
from ..targets import LayerSettings
from .allocate import gptq_bytes
from .config import MixedVariant
from .units import Unit, model_units

log = logging.getLogger("llmquant")

VERSION = "1"  # bump when the costs change: part of the cache key


def quantized(W: Tensor, H: Tensor, s: LayerSettings, estimate: str, solver, name: str = "") -> Tensor:
    """Q(W) (de-quantized, W's device, float32) at setting `s` by `estimate`: rtn or gptq."""
    if estimate == "rtn":
        q, scales, zeros = quantize_rtn(W, s.bits, s.group_size, s.sym)
        return dequantize_groups(q, scales, zeros, group_index(W.shape[1], s.group_size).to(q.device))
    out, _ = solve_layer(name, W, H, s, solver)
    return out.weight.dequantize().to(W.device)


def noise_to_signal(W: Tensor, W_hat: Tensor, H: Tensor) -> tuple[float, float]:
    """(tr(ΔW H ΔWᵀ), tr(W H Wᵀ)) with ΔW = W - Ŵ, products in H's dtype, sums in float64."""
    W = W.to(H.dtype)
    d = W - W_hat.to(device=W.device, dtype=H.dtype)
    return float(((d @ H) * d).sum(dtype=torch.float64)), float(((W @ H) * W).sum(dtype=torch.float64))


class SensitivityHandler:
    """The sequential loop's handler: Hessians per input group, then every candidate setting of each
    Linear solved from them and scored; the model's weights are never changed."""

    def __init__(self, settings: dict[str, tuple[tuple[int, int], ...]], variant: MixedVariant, state_key: str):
        self.settings, self.variant, self.state_key = settings, variant, state_key
        self._stats: dict[tuple[str, ...], list] = {}
        self._rows: list[dict] = []
        self._run: BlockRun | None = None

    def targets(self, index: int, name: str, block: nn.Module) -> dict[str, nn.Module]:
        return {f"{name}.{sub}": m for sub, m in block.named_modules()
                if isinstance(m, nn.Linear) and f"{name}.{sub}" in self.settings}

    def begin_block(self, run: BlockRun) -> None:
        self._run, self._rows, self._stats = run, [], {}

    def observe(self, group: InputGroup, x: Tensor) -> None:
        st = self._stats.setdefault(group.names, [None, 0])
        st[0], st[1] = accumulate_hessian(st[0], st[1], x)

    def solve(self, group: InputGroup) -> None:
        H, _ = self._stats.pop(group.names, [None, 0])
        for name, module in zip(group.names, group.modules):
            W = module.weight.detach()
            if H is None:
                log.warning("mixed: %s never ran on the calibration data; its sensitivity is its weight error", name)
            Hm = H if H is not None else torch.eye(W.shape[1], device=W.device)
            costs = []
            for bits, gs in self.settings[name]:
                t0 = time.perf_counter()
                W_hat = quantized(W, Hm, LayerSettings(bits, gs, self.variant.sym), self.variant.estimate,
                                  self.variant, name)
                err, signal = noise_to_signal(W, W_hat, Hm)
                costs.append({"bits": bits, "group_size": gs, "error": err, "signal": signal,
                              "seconds": round(time.perf_counter() - t0, 4)})
            self._rows.append({"module": name, "costs": costs})
        if self._run is not None:
            self._run.note(f"{', '.join(n.rsplit('.', 1)[-1] for n in group.names)}: "
                           f"{len(group.names) * len(self.settings[group.names[0]])} settings scored")

    def finish_block(self, run: BlockRun) -> BlockResult:
        return BlockResult({}, self._rows)

    def restore_block(self, run: BlockRun, state: dict[str, Tensor]) -> None:
        pass  # nothing changed in the model; the rows come back from the loop's manifest


def unit_entries(units: list[Unit], rows: list[dict]) -> list[dict]:
    """The JSON entries of the units from per-module rows: per option, bytes and seconds summed over
    the members and cost = the sum of the members' noise-to-signal ratios."""
    by_module = {r["module"]: {(c["bits"], c["group_size"]): c for c in r["costs"]} for r in rows}
    out = []
    for u in units:
        options = []
        for bits, gs in u.settings:
            cs = [by_module[m][(bits, gs)] for m in u.modules]
            cost = sum(c["error"] / c["signal"] if c["signal"] > 0 else 0.0 for c in cs)
            options.append({"bits": bits, "group_size": gs,
                            "bytes": sum(gptq_bytes(i, o, bits, gs) for i, o in u.shapes),
                            "cost": cost, "seconds": round(sum(c["seconds"] for c in cs), 4)})
        out.append({"name": u.name, "modules": list(u.modules), "in_features": u.in_features,
                    "out_features": u.out_features, "options": options})
    return out


def cache_key(variant: MixedVariant, calib: CalibrationSet, ctx: QuantizeContext) -> str:
    return content_hash({
        "sensitivity": VERSION, "model": ctx.model_key, "calibration": calib.key, "estimate": variant.estimate,
        "bits": variant.candidate_bits, "groups": variant.candidate_group_sizes, "sym": variant.sym,
        "skip": [o.pattern for o in variant.overrides], "device": str(ctx.device),
        "solver": {k: getattr(variant, k) for k in SOLVER_FIELDS if k != "true_sequential"}
        if variant.estimate == "gptq" else None})


def sensitivity(model: nn.Module, variant: MixedVariant, calib: CalibrationSet, ctx: QuantizeContext,
                where: Path) -> tuple[Path, dict]:
    """(path, table) of the sensitivity JSON for `variant` on `model`: read from `where` when an
    earlier run or attempt wrote it under the same key, else measured and written there."""
    key = cache_key(variant, calib, ctx)
    path = Path(where) / f"sensitivity-{key}.json"
    table = read_json(path)
    if table and table.get("key") == key:
        ctx.progress.message(f"{variant.name}: sensitivities reused from {path}")
        return path, table
    units = model_units(model, variant)
    settings = {m: u.settings for u in units for m in u.modules}
    residency = ctx.blocks or EagerBlocks()
    if not residency.lazy:
        model.to("cpu")
    work = Path(where) / f"sensitivity-{key}.work"
    opts = SequentialOptions(device=ctx.device, batch_size=default_batch_size(calib.input_ids.shape[1]),
                             staged=False, float_outputs=True, work_dir=work,
                             label=f"sensitivity {variant.name} ({variant.estimate})",
                             activation_budget=ctx.activation_budget_bytes, activation_dtype=ctx.activation_dtype)
    t0 = time.perf_counter()
    result = run_sequential(model, calib.input_ids, SensitivityHandler(settings, variant, key), opts,
                            ctx.progress, residency)
    table = {"key": key, "model": ctx.model_key, "calibration": calib.key, "estimate": variant.estimate,
             "cost": "sum over the unit's Linears of tr(dW H dW^T) / tr(W H W^T) (noise-to-signal of the outputs)",
             "seconds": round(time.perf_counter() - t0, 3), "layers": unit_entries(units, result.report)}
    atomic_write_json(path, table)
    shutil.rmtree(work, ignore_errors=True)
    return path, table
