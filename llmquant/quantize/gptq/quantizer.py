"""GPTQ quantizer: the shared sequential loop (sequential.py) driving the GPTQ solver
(gptq_math.py), written block by block in its format (formats.table, GPTQ v1)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ...errors import UserError
from ...formats import gptq_v1
from ...formats.checkpoint import save_dtype
from ...formats.intweight import IntWeight
from .config import GPTQVariant, solve_dtype
from ...runs import content_hash
from .. import checkpoint_format
from ..base import CalibrationSet, QuantizeContext, QuantizeResult
from .gptq_math import GPTQOutput, NotPositiveDefinite, accumulate_hessian, gptq_quantize
from ...formats.table import FORMATS
from ...formats.write import block_linears, packed_module
from ..checkpoint_stream import CheckpointStream
from ..lazy import Blocks, EagerBlocks
from ..metrics import relative_error
from ..sequential import (
    BlockResult,
    BlockRun,
    InputGroup,
    SequentialOptions,
    SequentialResult,
    default_batch_size,
    run_sequential,
)
from ..targets import LayerSettings, target_linears

log = logging.getLogger("llmquant")

MAX_DAMP = 1.0


def solve_layer(name: str, W: Tensor, H: Tensor, s: LayerSettings, variant: GPTQVariant,
                factors: dict | None = None) -> tuple[GPTQOutput, float]:
    """GPTQ for one Linear; a Hessian that is not positive definite is retried with ten times
    the damping (up to MAX_DAMP), with a warning naming the layer. Returns (output, damp used).
    `factors`: see gptq_math.gptq_quantize (several settings of the same W and H)."""
    if not torch.isfinite(H).all():
        raise UserError(
            f"calibration: {name}: its inputs contain NaN or Inf (or their squares overflow float32); "
            "the model produces non-finite activations on the calibration data — check that it works in "
            "float32, or use fewer calibration.n_samples / a shorter calibration.seqlen")
    if not torch.isfinite(W).all():
        raise UserError(f"model: {name}: the weight contains NaN or Inf; the checkpoint is damaged or overflowed")
    damp = variant.damp_percent
    while True:
        try:
            out = gptq_quantize(W, H, s.bits, s.group_size, s.sym, desc_act=variant.desc_act,
                                static_groups=variant.static_groups, act_group_aware=variant.act_group_aware,
                                damp_percent=damp, block_size=variant.block_size, factors=factors,
                                grid=variant.grid)
            return out, damp
        except NotPositiveDefinite as e:
            if damp >= MAX_DAMP:
                raise UserError(
                    f"calibration: {name}: the Hessian is not positive definite even with damp_percent {damp:g} "
                    "(degenerate calibration inputs); use more or more varied calibration samples") from None
            new = min(MAX_DAMP, damp * 10)
            log.warning("gptq: %s: %s with damp_percent %g; retrying with damp_percent %g", name, e, damp, new)
            damp = new


def _unpack(tensors: dict[str, Tensor]) -> IntWeight:
    bits = tensors["qweight"].shape[0] * 32 // tensors["g_idx"].numel()
    return gptq_v1.unpack_layer(tensors, bits)


def block_state(layers: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """A block's resume state: its Linears' packed GPTQ v1 tensors, as `{module}.{tensor}`."""
    return {f"{n}.{leaf}": t for n, tensors in layers.items() for leaf, t in tensors.items()}


def restore_packed(model: nn.Module, state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """block_state's inverse: each Linear of `state` gets its de-quantized weight back; returns the
    packed tensors by module."""
    layers = {}
    for name in sorted({k.rsplit(".", 1)[0] for k in state}):
        tensors = {leaf: state[f"{name}.{leaf}"] for leaf in ("qweight", "qzeros", "scales", "g_idx")}
        module = model.get_submodule(name)
        with torch.no_grad():
            module.weight.copy_(_unpack(tensors).dequantize().to(module.weight.dtype))
        layers[name] = tensors
    return layers


class PackedHandler:
    """What the handlers that pack each solved Linear as GPTQ v1 share (GPTQ's, SignRound's): the
    block's targets (its Linears with settings), the packed tensors of the block being solved
    (`_block`) and of every block not yet written (`layers`), and resume through block_state."""

    def __init__(self, model: nn.Module, settings: dict[str, LayerSettings], state_key: str):
        self.model, self.settings, self.state_key = model, settings, state_key
        # solved layers, packed right away (GPTQ v1 tensors): 8x smaller than int32 integers
        self.layers: dict[str, dict[str, Tensor]] = {}
        self._block: dict[str, dict[str, Tensor]] = {}
        self._rows: list[dict] = []
        self._run: BlockRun | None = None

    def targets(self, index: int, name: str, block: nn.Module) -> dict[str, nn.Module]:
        return {f"{name}.{sub}": mod for sub, mod in block.named_modules()
                if isinstance(mod, nn.Linear) and f"{name}.{sub}" in self.settings}

    def finish_block(self, run: BlockRun) -> BlockResult:
        self.layers.update(self._block)
        return BlockResult(block_state(self._block), self._rows)

    def restore_block(self, run: BlockRun, state: dict[str, Tensor]) -> None:
        self.layers.update(restore_packed(self.model, state))


class GPTQHandler(PackedHandler):
    """The GPTQ side of the sequential loop: Hessians per input group, then a solve per Linear."""

    def __init__(self, model: nn.Module, variant: GPTQVariant, settings: dict[str, LayerSettings], state_key: str,
                 device: str = "cpu"):
        super().__init__(model, settings, state_key)
        self.variant = variant
        self.dtype = solve_dtype(variant.precision, device)  # of the Hessians, hence of the solve
        self._stats: dict[tuple[str, ...], list] = {}  # group names -> [H, n_samples, seconds]
        self.write_back = True  # replace solved weights in the model (off for a tied lm_head)

    def begin_block(self, run: BlockRun) -> None:
        self._run, self._block, self._rows, self._stats = run, {}, [], {}

    def observe(self, group: InputGroup, x: Tensor) -> None:
        t0 = time.perf_counter()
        st = self._stats.setdefault(group.names, [None, 0, 0.0])
        st[0], st[1] = accumulate_hessian(st[0], st[1], x, self.dtype)
        st[2] += time.perf_counter() - t0

    def solve(self, group: InputGroup) -> None:
        H, _, h_seconds = self._stats.pop(group.names, [None, 0, 0.0])
        if H is None:
            log.warning("gptq: %s never ran on the calibration data; quantized without error feedback (RTN)",
                        ", ".join(group.names))
        for name, module in zip(group.names, group.modules):
            t0 = time.perf_counter()
            W = module.weight.detach()
            Hm = H if H is not None else torch.eye(W.shape[1], device=W.device)
            s = self.settings[name]
            out, damp = solve_layer(name, W, Hm, s, self.variant)
            deq = out.weight.dequantize()
            # before the write-back: W is the module's own weight, which copy_ overwrites
            w_err = relative_error(W.cpu(), deq)
            if self.write_back:
                with torch.no_grad():
                    module.weight.copy_(deq.to(module.weight.dtype))
            self._block[name] = gptq_v1.pack_layer(out.weight)
            secs = time.perf_counter() - t0 + h_seconds / len(group.names)
            self._rows.append({"module": name, "bits": s.bits, "group_size": s.group_size,
                               "output_error": out.output_error, "rel_error": w_err, "seconds": secs,
                               "damp_percent": damp, "dead_columns": out.dead_columns})
            if self._run is not None:
                self._run.note(f"{name} out-err {out.output_error:.4f} {secs:.2f} s")

    def int_weight(self, name: str) -> IntWeight:
        return _unpack(self.layers[name])


def stream_solved(model: nn.Module, variant, targets: dict, handler, input_ids: Tensor, opts: SequentialOptions,
                  out_dir: Path, ctx: QuantizeContext, residency: Blocks, extra_config: dict,
                  quantize_head: Callable[[SequentialResult], dict] | None = None):
    """The sequential loop with a handler whose `layers` receives each solved Linear's packed tensors
    (GPTQ's, SignRound's), streaming every block into the variant's checkpoint as it is done.
    `quantize_head(result)` (when lm_head is a target) solves lm_head after the last block and
    returns its report row. Returns (format, quantization_config, loop result, report rows)."""
    fmt = FORMATS[checkpoint_format(variant)]
    stream = CheckpointStream(out_dir, model, save_dtype(model, variant.save_dtype), ctx.max_shard_bytes)
    with stream:  # a failure removes what was written
        written: set[str] = set()

        def block_done(i: int, name: str, block: nn.Module) -> None:
            """The block's packed Linears leave the handler for the checkpoint."""
            packed = {}  # in model order, solved or restored alike: the same shard boundaries
            for n in [n for n in targets if n.startswith(name + ".") and n in handler.layers]:
                packed[n] = packed_module(fmt, handler.layers.pop(n), targets[n][0])
                written.add(n)
            stream.add_module(name, block, packed)

        result = run_sequential(model, input_ids, handler, opts, ctx.progress, residency, block_done)
        report = list(result.report)
        head_packed = {}
        if quantize_head is not None:
            report.append(quantize_head(result))
            head_packed = {"lm_head": packed_module(fmt, handler.layers.pop("lm_head"), targets["lm_head"][0])}
            written.add("lm_head")
        stream.add_outer(model, residency, head_packed)
        qc, extra_json = fmt.checkpoint_config(variant, {n: None for n in targets if n in written},
                                               *block_linears(model), extra_config=extra_config)
        stream.finish(model, qc, ctx.tokenizer, extra_json)
    return fmt, qc, result, report


def _final_norm(model: nn.Module) -> nn.Module | None:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return getattr(decoder, "norm", None) or getattr(decoder, "final_layer_norm", None)


def module_name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


class GPTQQuantizer:
    method = "gptq"
    version = "2"  # 2: H⁻¹ by cholesky_solve (float32 rounding differs from cholesky_inverse's)
    # batches kept parked with their activations in the staged loop (None: all; fewer trades
    # compute for memory, with identical results; see sequential.py)
    max_parked: int | None = None

    def quantize(self, model: nn.Module, variant: GPTQVariant, calib: CalibrationSet | None,
                 out_dir: Path, ctx: QuantizeContext) -> QuantizeResult:
        if calib is None:
            raise UserError(f"variants: {variant.name}: method 'gptq' needs a 'calibration' section")
        residency = ctx.blocks or EagerBlocks()
        if not residency.lazy:
            model.to("cpu")  # one block at a time goes to ctx.device
        targets = target_linears(model, variant)
        settings = {n: s for n, (_, s) in targets.items()}
        bs = default_batch_size(calib.input_ids.shape[1])
        key = content_hash({"method": self.method, "version": self.version, "calibration": calib.key,
                            "variant": variant.model_dump(mode="json", exclude={"name", "save_dtype"}),
                            "batch_size": bs, "device": str(ctx.device)})
        handler = GPTQHandler(model, variant, settings, key, str(ctx.device))
        head = "lm_head" in settings
        opts = SequentialOptions(device=ctx.device, batch_size=bs, staged=variant.true_sequential,
                                 work_dir=ctx.work_dir, keep_final=head, label=f"gptq {variant.name}",
                                 max_parked=self.max_parked, activation_budget=ctx.activation_budget_bytes,
                                 activation_dtype=ctx.activation_dtype)
        extra = {"desc_act": variant.desc_act, "static_groups": variant.static_groups,
                 "damp_percent": variant.damp_percent, "true_sequential": variant.true_sequential,
                 "act_group_aware": variant.act_group_aware and not variant.desc_act}
        quantize_head = (lambda result: self._quantize_head(model, handler, result.hidden, variant, ctx, residency)
                         ) if head else None
        fmt, qc, result, report = stream_solved(model, variant, targets, handler, calib.input_ids, opts, out_dir,
                                                ctx, residency, extra, quantize_head)
        if result.resumed:
            log.info("gptq %s: blocks %s restored from %s, %d solved now", variant.name,
                     result.resumed, ctx.work_dir, len(result.solved))
        return QuantizeResult(fmt.writes, qc, report, {
            "resumed_blocks": result.resumed, "solved_blocks": result.solved,
            "block_seconds": [round(t, 3) for _, t in result.block_seconds]})

    def _quantize_head(self, model: nn.Module, handler: GPTQHandler, hidden: list[Tensor] | None,
                       variant: GPTQVariant, ctx: QuantizeContext, residency: Blocks) -> dict:
        """lm_head calibrates on the final norm's outputs of the quantized model."""
        head = model.get_output_embeddings()
        norm = _final_norm(model)
        if norm is None or hidden is None:
            raise UserError(f"variants: {variant.name}: quantize_lm_head: cannot find the final norm of "
                            f"{type(model).__name__} to calibrate lm_head; leave quantize_lm_head off")
        group = InputGroup(("lm_head",), (head,))
        handler.write_back = False  # nothing runs after it, and a tied head shares the embeddings
        handler.begin_block(BlockRun(-1, "lm_head", head, [group], [], [], torch.device(ctx.device)))
        names = [module_name(model, norm), module_name(model, head)]
        residency.load(names[0], norm, ctx.device)
        residency.load(names[1], head, ctx.device)
        try:
            with torch.no_grad():
                for h in hidden:
                    handler.observe(group, norm(h))
            handler.solve(group)
        finally:
            residency.unload(names[0], norm)
            residency.unload(names[1], head)
        rows = handler.finish_block(handler._run).report
        return rows[0]
