"""Per-layer sensitivity: the predicted cost of quantizing each allocation unit at each candidate
setting, from the calibration Hessians of the *unquantized* model.

For a Linear with weight W and calibration inputs X, H = 2/N XᵀX (gptq_math.accumulate_hessian,
the very Hessian GPTQ solves with). Quantizing W to Q(W) changes its outputs by ΔW Xᵀ, whose
per-channel squared size is diag(ΔW H ΔWᵀ) (up to the constant 2/N), with Q = the GPTQ solve at
that setting (estimate gptq) or round-to-nearest (estimate rtn). Two weightings of that error
(the variant's `weighting`; both are stored per option, `cost` is the chosen one):

    fisher  Σ_i G_i (ΔW H ΔWᵀ)_ii / (4 seqlen), G = the output Fisher of the Linear (fisher.py):
            a second-order prediction of the rise of the mean per-token loss, in nats. It sees
            what comes after the layer: the following blocks amplify an early residual writer's
            error (down_proj / o_proj of the first blocks) far more than its own output shows.
            Costs one streamed forward and backward over `fisher_samples` sequences.
    output  tr(ΔW H ΔWᵀ) / tr(W H Wᵀ), the noise-to-signal ratio of the layer's own outputs (no
            gradients). Measured on SmolLM2 it ranks sizes well but misplaces bits at a fixed size:
            it undervalues the first blocks' residual writers (bench/results/mixed-smollm2-*.md).

A unit's cost is the sum over its Linears (q/k/v, gate/up share one setting: vLLM fuses them), and
an allocation's predicted cost is the sum over units (independent small errors add, to first
order, in the loss as in the output's noise power). It is a prediction, checked against
measured perplexity/KLD by the quality search; no forward per candidate is needed.

The Hessians are gathered block by block with the shared sequential loop, unstaged and on the
float outputs (nothing is written back), so only one block's activations live at a time. The
result is a JSON file cached by content hash (model, calibration, candidates, estimate, weighting,
solver), so a quality search's later attempts reuse it; `seconds` per option is its solve's time.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ...runs import atomic_write_bytes, atomic_write_json, content_hash, read_json
from ..base import CalibrationSet, QuantizeContext
from ..blockrun import BlockResult, BlockRun, InputGroup
from ..gptq.config import SOLVER_FIELDS, solve_dtype
from ..gptq.gptq_math import accumulate_hessian
from ..gptq.quantizer import solve_layer
from ..grid import dequantize_groups, group_index, quantize_rtn
from ..lazy import EagerBlocks
from ..sequential import SequentialOptions, default_batch_size, run_sequential
from ..targets import LayerSettings
from .allocate import gptq_bytes
from .config import MixedVariant
from .fisher import output_fisher
from .units import Unit, model_units

log = logging.getLogger("llmquant")

VERSION = "2"  # bump when the costs change: part of the cache key (2: nsr and fisher per option)

WEIGHTINGS: dict[str, tuple[str, str]] = {
    # weighting: (the option field that is its cost, what the cost is)
    "fisher": ("fisher", "predicted rise of the mean per-token loss in nats: sum over the unit's Linears of "
                         "1/(4 seqlen) sum_i G_i (dW H dW^T)_ii, G = output Fisher (fisher.py)"),
    "output": ("nsr", "sum over the unit's Linears of tr(dW H dW^T) / tr(W H W^T) (noise-to-signal of the outputs)"),
}


def quantized(W: Tensor, H: Tensor, s: LayerSettings, estimate: str, solver, name: str = "",
              factors: dict | None = None) -> Tensor:
    """Q(W) (de-quantized, W's device, float32) at setting `s` by `estimate`: rtn or gptq
    (`factors`: a dict kept across the settings of one layer, so H is factored once)."""
    if estimate == "rtn":
        q, scales, zeros = quantize_rtn(W, s.bits, s.group_size, s.sym)
        return dequantize_groups(q, scales, zeros, group_index(W.shape[1], s.group_size).to(q.device))
    out, _ = solve_layer(name, W, H, s, solver, factors)
    return out.weight.dequantize().to(W.device)


def row_errors(W: Tensor, W_hat: Tensor, H: Tensor) -> Tensor:
    """diag(ΔW H ΔWᵀ) (float64, one per output channel) with ΔW = W - Ŵ, products in H's dtype."""
    W = W.to(H.dtype)
    d = W - W_hat.to(device=W.device, dtype=H.dtype)
    return ((d @ H) * d).sum(1, dtype=torch.float64)


def output_energy(W: Tensor, H: Tensor) -> float:
    """tr(W H Wᵀ), the layer's output signal (product in H's dtype, sum in float64)."""
    W = W.to(H.dtype)
    return float(((W @ H) * W).sum(dtype=torch.float64))


def noise_to_signal(W: Tensor, W_hat: Tensor, H: Tensor) -> tuple[float, float]:
    """(tr(ΔW H ΔWᵀ), tr(W H Wᵀ)) with ΔW = W - Ŵ, products in H's dtype, sums in float64."""
    return float(row_errors(W, W_hat, H).sum()), output_energy(W, H)


def fisher_cost(rows: Tensor, G: Tensor, seqlen: int) -> float:
    """The predicted rise of the mean per-token loss (nats) from output errors diag(ΔW H ΔWᵀ) =
    `rows` weighted by the output Fisher `G` (fisher.output_fisher): ½ Σ_i G_i E_t[Δy_ti²] with
    E_t[Δy Δyᵀ] = ΔW H ΔWᵀ / (2 seqlen) (H = 2/n_sequences XᵀX, gptq_math.accumulate_hessian)."""
    return float((rows * G.to(device=rows.device, dtype=torch.float64)).sum()) / (4 * seqlen)


class SensitivityHandler:
    """The sequential loop's handler: Hessians per input group, then every candidate setting of each
    Linear solved from them and scored; the model's weights are never changed."""

    def __init__(self, settings: dict[str, tuple[tuple[int, int], ...]], variant: MixedVariant, state_key: str,
                 fisher: dict[str, Tensor] | None = None, seqlen: int = 1, device: str = "cpu"):
        self.settings, self.variant, self.state_key = settings, variant, state_key
        self.fisher, self.seqlen = fisher, seqlen
        self.dtype = solve_dtype(variant.precision, device)  # of the Hessians, hence of the solves
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
        st[0], st[1] = accumulate_hessian(st[0], st[1], x, self.dtype)

    def solve(self, group: InputGroup) -> None:
        H, _ = self._stats.pop(group.names, [None, 0])
        for name, module in zip(group.names, group.modules):
            W = module.weight.detach()
            if H is None:
                log.warning("mixed: %s never ran on the calibration data; its sensitivity is its weight error", name)
            Hm = H if H is not None else torch.eye(W.shape[1], device=W.device)
            if self.fisher is not None and name not in self.fisher:
                log.warning("mixed: %s got no output gradient (the gradient pass never reached it); its Fisher "
                            "cost is 0, so it gets the smallest candidate", name)
            costs, factors = [], {}
            signal = output_energy(W, Hm)  # per layer, not per setting
            for bits, gs in self.settings[name]:
                t0 = time.perf_counter()
                W_hat = quantized(W, Hm, LayerSettings(bits, gs, self.variant.sym), self.variant.estimate,
                                  self.variant, name, factors)
                rows = row_errors(W, W_hat, Hm)
                cost = {"bits": bits, "group_size": gs, "error": float(rows.sum()), "signal": signal}
                if self.fisher is not None:
                    G = self.fisher.get(name)
                    cost["fisher"] = fisher_cost(rows, G, self.seqlen) if G is not None else 0.0
                costs.append({**cost, "seconds": round(time.perf_counter() - t0, 4)})
            self._rows.append({"module": name, "costs": costs})
        if self._run is not None:
            self._run.note(f"{', '.join(n.rsplit('.', 1)[-1] for n in group.names)}: "
                           f"{len(group.names) * len(self.settings[group.names[0]])} settings scored")

    def finish_block(self, run: BlockRun) -> BlockResult:
        return BlockResult({}, self._rows)

    def restore_block(self, run: BlockRun, state: dict[str, Tensor]) -> None:
        pass  # nothing changed in the model; the rows come back from the loop's manifest


def unit_entries(units: list[Unit], rows: list[dict], weighting: str = "output") -> list[dict]:
    """The JSON entries of the units from per-module rows: per option, bytes and seconds summed over
    the members; `nsr` = the sum of the members' noise-to-signal ratios, `fisher` (when measured) =
    the sum of their Fisher-weighted costs, and `cost` = the one `weighting` names."""
    by_module = {r["module"]: {(c["bits"], c["group_size"]): c for c in r["costs"]} for r in rows}
    out = []
    for u in units:
        options = []
        for bits, gs in u.settings:
            cs = [by_module[m][(bits, gs)] for m in u.modules]
            nsr = sum(c["error"] / c["signal"] if c["signal"] > 0 else 0.0 for c in cs)
            option = {"bits": bits, "group_size": gs, "bytes": sum(gptq_bytes(i, o, bits, gs) for i, o in u.shapes),
                      "nsr": nsr}
            if all("fisher" in c for c in cs):
                option["fisher"] = sum(c["fisher"] for c in cs)
            option["cost"] = option[WEIGHTINGS[weighting][0]]
            options.append({**option, "seconds": round(sum(c["seconds"] for c in cs), 4)})
        out.append({"name": u.name, "modules": list(u.modules), "in_features": u.in_features,
                    "out_features": u.out_features, "options": options})
    return out


def cache_key(variant: MixedVariant, calib: CalibrationSet, ctx: QuantizeContext) -> str:
    return content_hash({
        "sensitivity": VERSION, "model": ctx.model_key, "calibration": calib.key, "estimate": variant.estimate,
        "bits": variant.candidate_bits, "groups": variant.candidate_group_sizes, "sym": variant.sym,
        "skip": [o.pattern for o in variant.overrides], "device": str(ctx.device), "weighting": variant.weighting,
        "fisher_samples": min(variant.fisher_samples, calib.input_ids.shape[0]) if variant.weighting == "fisher" else None,
        "solver": {k: getattr(variant, k) for k in SOLVER_FIELDS if k != "true_sequential"}
        if variant.estimate == "gptq" else None})


def gradients(model: nn.Module, variant: MixedVariant, calib: CalibrationSet, ctx: QuantizeContext,
              residency, work: Path, names: set[str]) -> dict[str, Tensor]:
    """The output Fisher of the Linears `names` over the first `fisher_samples` calibration rows,
    kept in the work dir so a resumed pass does not measure it again."""
    path = work / "fisher.safetensors"
    if path.is_file():
        return load_file(str(path))
    fisher = output_fisher(model, calib.input_ids[:variant.fisher_samples], names, ctx.device, residency,
                           ctx.progress, work / "fisher-activations", ctx.activation_budget_bytes,
                           ctx.activation_dtype)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in fisher.items()}))
    return fisher


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
    fisher = (gradients(model, variant, calib, ctx, residency, work, set(settings))
              if variant.weighting == "fisher" else None)
    fisher_seconds = time.perf_counter() - t0
    handler = SensitivityHandler(settings, variant, key, fisher, calib.input_ids.shape[1], str(ctx.device))
    result = run_sequential(model, calib.input_ids, handler, opts, ctx.progress, residency)
    table = {"key": key, "model": ctx.model_key, "calibration": calib.key, "estimate": variant.estimate,
             "weighting": variant.weighting, "cost": WEIGHTINGS[variant.weighting][1],
             "seconds": round(time.perf_counter() - t0, 3),
             "fisher_seconds": round(fisher_seconds, 3) if fisher is not None else None,
             "layers": unit_entries(units, result.report, variant.weighting)}
    atomic_write_json(path, table)
    shutil.rmtree(work, ignore_errors=True)
    return path, table
