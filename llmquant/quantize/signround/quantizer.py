"""SignRound quantizer: the shared sequential loop (sequential.py, unstaged) drives a handler that,
per decoder block, computes the block's float targets, tunes every target Linear's rounding together
(tune.py) on the block's inputs (the quantized model's activations, as GPTQ calibrates), writes the
de-quantized weights into the block (the next block calibrates on them) and packs them as GPTQ v1.

The targets (`variant.target`):
  model  the float model's outputs of this block: a second, float stream of activations is carried
         from block to block (moved through each block before its weights are tuned, and through
         restored blocks on resume), so a block also learns to correct earlier blocks' error
         (AutoRound's protocol, its `enable_quanted_input`); memory: one more stream of activations
  block  the float block's outputs on the quantized inputs (GPTQ's objective); the targets of one
         block at a time
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ...errors import UserError
from ...formats import gptq_v1
from ...formats.intweight import IntWeight
from ...runs import content_hash
from ..activations import Activations
from ..base import CalibrationSet, QuantizeContext, QuantizeResult
from ..grid import group_index
from ..gptq.quantizer import PackedHandler, stream_solved
from ..lazy import EagerBlocks
from ..metrics import relative_error
from ..sequential import BlockRun, InputGroup, SequentialOptions
from ..targets import LayerSettings, target_linears
from . import signround_math
from .config import SignRoundVariant
from .tune import Batch, TuneOptions, tune_block

log = logging.getLogger("llmquant")

NOTES = 10  # progress notes per block


class SignRoundHandler(PackedHandler):
    """The SignRound side of the sequential loop (SequentialOptions.staged=False, observe=False)."""

    def __init__(self, model: nn.Module, variant: SignRoundVariant, settings: dict[str, LayerSettings],
                 state_key: str, targets_budget: int | None = None, spill_dir: Path | None = None,
                 stream_dtype: torch.dtype | None = None):
        super().__init__(model, settings, state_key)
        self.variant, self.targets_budget, self.spill_dir = variant, targets_budget, spill_dir
        self.stream_dtype = stream_dtype  # of the float stream (target: model), as the loop's own stream
        self._pending: set[tuple[str, ...]] = set()
        self._float: Activations | None = None  # target: model: the float model's inputs to the next block

    def close(self) -> None:
        """Let go of the float stream (and its spilled files)."""
        if self._float is not None:
            self._float.clear()
            self._float = None

    def restore_block(self, run: BlockRun, state: dict[str, Tensor]) -> None:
        if self.variant.target == "model" and len(run.inputs):  # a later block is tuned: carry the float stream
            self._advance_float(run)
        super().restore_block(run, state)

    def begin_block(self, run: BlockRun) -> None:
        self._run, self._block, self._rows = run, {}, []
        self._pending = {g.names for g in run.groups}

    def observe(self, group: InputGroup, x: Tensor) -> None:
        pass  # the tuning runs its own forwards

    def solve(self, group: InputGroup) -> None:
        self._pending.discard(group.names)
        if not self._pending:  # every group's inputs were seen: tune the whole block at once
            self._tune(self._run)

    # -- tuning ----------------------------------------------------------------------------------

    def _store(self, run: BlockRun, name: str, dtype: torch.dtype | None = None) -> Activations:
        spill = self.spill_dir / name if self.spill_dir is not None else None
        return Activations(self.targets_budget, spill, dtype, store_device=None if run.device.type == "cpu" else "cpu",
                           compute_device=run.device)

    def _advance_float(self, run: BlockRun) -> Activations:
        """Move the float stream through this block while its weights are still float: the stream
        then holds the float model's outputs of the block (this block's targets, the next one's inputs)."""
        if self._float is None:
            if run.index != 0:
                raise RuntimeError(f"signround: the float stream starts at block 0, not at {run.name}")
            self._float = self._store(run, "float", self.stream_dtype)  # block 0: both streams are the embeddings
            for b in range(len(run.inputs)):
                self._float.append(run.inputs[b])
        for b in range(len(self._float)):
            self._float[b] = run.forward(b, x=self._float[b])
        return self._float

    def _float_targets(self, run: BlockRun) -> Activations:
        if self.variant.target == "model":
            return self._advance_float(run)
        store = self._store(run, "targets")
        for b in range(len(run.inputs)):
            store.append(run.forward(b))
        return store

    def _tune(self, run: BlockRun) -> None:
        v = self.variant
        t0 = time.perf_counter()
        prefix = run.name + "."
        settings = {n[len(prefix):]: s for n, s in self.settings.items() if n.startswith(prefix)}
        targets = self._float_targets(run)
        lr, factor_lr = v.step_sizes()
        full = v.grid == "fullrange"
        every = max(1, v.iters // NOTES)

        def batch(b: int) -> Batch:
            kw = run.kwargs[b]
            return Batch(run.inputs[b], kw["args"], kw["kwargs"], targets[b])

        def on_step(step: int, loss: float) -> None:
            if step % every == 0 or step == v.iters - 1:
                run.note(f"{run.name}: step {step + 1}/{v.iters} loss {loss:.4g}")

        try:
            with run.compute():
                result = tune_block(run.block, settings, batch, len(run.inputs),
                                    TuneOptions(v.iters, lr, factor_lr, v.seed, full), on_step)
        finally:
            if targets is not self._float:
                targets.clear()
        secs = time.perf_counter() - t0
        for sub, s in settings.items():
            module = run.block.get_submodule(sub)
            w = module.weight.detach().float()
            q, scales, zeros = signround_math.quantize(w, result.rounding[sub], s.bits, s.group_size, s.sym, full)
            q_rtn = signround_math.quantize(w, signround_math.initial_rounding(w, s.group_size), s.bits,
                                            s.group_size, s.sym, full)[0]  # before `w`, the module's own, is replaced
            layer = IntWeight(q.cpu(), scales.cpu(), zeros.cpu(), group_index(w.shape[1], s.group_size), s.bits)
            deq = layer.dequantize()
            err = relative_error(w.cpu(), deq)
            with torch.no_grad():
                module.weight.copy_(deq.to(module.weight.device, module.weight.dtype))
            r = result.rounding[sub]
            self._block[prefix + sub] = gptq_v1.pack_layer(layer)
            self._rows.append({
                "module": prefix + sub, "bits": s.bits, "group_size": s.group_size, "rel_error": err,
                "seconds": secs / len(settings), "block_loss_first": result.first_loss,
                "block_loss_best": result.best_loss, "best_step": result.best_step,
                "changed_vs_rtn": float((q != q_rtn).float().mean()),
                "range_factor_mean": float(r.beta.mean())})
        if result.first_loss is not None:
            run.note(f"{run.name}: loss {result.first_loss:.4g} -> {result.best_loss:.4g} (step "
                     f"{result.best_step + 1}) in {secs:.1f} s")


class SignRoundQuantizer:
    method = "signround"
    version = "1"

    def quantize(self, model: nn.Module, variant: SignRoundVariant, calib: CalibrationSet | None,
                 out_dir: Path, ctx: QuantizeContext) -> QuantizeResult:
        if calib is None:
            raise UserError(f"variants: {variant.name}: method 'signround' needs a 'calibration' section")
        residency = ctx.blocks or EagerBlocks()
        if not residency.lazy:
            model.to("cpu")  # one block at a time goes to ctx.device
        targets = target_linears(model, variant)
        settings = {n: s for n, (_, s) in targets.items()}
        bs = min(variant.batch_size, calib.input_ids.shape[0])
        key = content_hash({"method": self.method, "version": self.version, "calibration": calib.key,
                            "variant": variant.model_dump(mode="json", exclude={"name", "save_dtype"}),
                            "batch_size": bs, "device": str(ctx.device)})
        handler = SignRoundHandler(model, variant, settings, key, ctx.activation_budget_bytes, ctx.work_dir,
                                   ctx.activation_dtype)
        opts = SequentialOptions(device=ctx.device, batch_size=bs, staged=False, observe=False,
                                 work_dir=ctx.work_dir,
                                 label=f"signround {variant.name}", activation_budget=ctx.activation_budget_bytes,
                                 activation_dtype=ctx.activation_dtype)
        extra = {"desc_act": False, "true_sequential": True}
        try:
            fmt, qc, result, report = stream_solved(model, variant, targets, handler, calib.input_ids, opts, out_dir,
                                                    ctx, residency, extra)
        finally:
            handler.close()
        if result.resumed:
            log.info("signround %s: blocks %s restored from %s, %d tuned now", variant.name,
                     result.resumed, ctx.work_dir, len(result.solved))
        lr, factor_lr = variant.step_sizes()
        return QuantizeResult(fmt.writes, qc, report, {
            "iters": variant.iters, "target": variant.target, "grid": variant.grid, "lr": lr, "minmax_lr": factor_lr,
            "batch_samples": bs,
            "resumed_blocks": result.resumed, "solved_blocks": result.solved,
            "block_seconds": [round(t, 3) for _, t in result.block_seconds]})
