"""AWQ quantizer: the shared sequential loop (sequential.py, unstaged) drives a handler that,
per decoder block,
  1. observes each Linear group's input (mean |x| per channel, Gram matrix X^T X) and records the
     calls of the attention / MLP modules the search replays (awq_search.py);
  2. searches one channel scale per mapping of the architecture table (awq_arch.py) on the
     still-float block (awq_math.py: the AWQ ratio grid, coarse to fine by default; the loss is
     the inspected module's output MSE on a subset of the calibration tokens, `search_samples`
     samples' worth: whole samples for attention, every k-th token of every sample for the
     MLP; or the Linears' own output MSE on every token through the Gram matrix);
  3. applies: folds every scale into its previous op, searches the clipping bounds on the
     scaled weights, clips, and rounds to AWQ's grid; the block's Linears then hold the
     de-quantized weights, so the next block calibrates on the quantized model's activations
     (`propagate: float`: on the float block's outputs, kept from step 1; one forward fewer).
The search results (scales, clip bounds) are the block's resume state: a rerun with the same
settings re-applies them without searching. The checkpoint is AWQ GEMM (formats/awq_gemm.py).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from ...errors import UserError
from ...formats.checkpoint import save_dtype
from ...formats.format import LayerGroups
from ...formats.intweight import IntWeight
from ...formats.table import FORMATS
from ...formats.write import block_linears, packed_module
from ...runs import content_hash
from .config import AWQVariant
from . import awq_arch
from .awq_math import (
    InputStats,
    awq_quantize,
    apply_clip,
    clip_search,
    fake_quantize,
    gram_loss,
    scale_candidates,
    search_scales,
    weight_abs_mean,
)
from .awq_search import CallRecorder, module_loss, reusing_freed_memory, working_bytes_per_token
from .. import checkpoint_format
from ..base import CalibrationSet, QuantizeContext, QuantizeResult
from ..checkpoint_stream import CheckpointStream
from ..lazy import EagerBlocks
from ..metrics import output_error, relative_error
from ..grid import group_index
from ..sequential import BlockResult, BlockRun, InputGroup, SequentialOptions, default_batch_size, run_sequential
from ..targets import LayerSettings, find_blocks, target_linears

log = logging.getLogger("llmquant")


def check_model(variant: AWQVariant, model_type: str | None, model: nn.Module) -> str | None:
    """Preflight (no weights needed): the architecture is in the AWQ table and its blocks have
    the modules the table names."""
    if awq_arch.family_for(model_type) is None:
        return awq_arch.check_model(model_type, nn.Module(), "")
    try:
        prefix, blocks = find_blocks(model)
    except ValueError as e:
        return str(e)
    return awq_arch.check_model(model_type, blocks[0], f"{prefix}.0")


def resolve_calib_dtype(choice: str, device: str) -> torch.dtype:
    if choice != "auto":
        return getattr(torch, choice)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from ...loading.runtime import cpu_has_bf16

    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def fold_scale(prev: nn.Module, linears: tuple[nn.Module, ...], s: Tensor) -> None:
    """prev's output / s, every consumer's input columns * s: the float model is unchanged."""
    with torch.no_grad():
        s = s.to(prev.weight.device, prev.weight.dtype)
        if isinstance(prev, nn.Linear):
            prev.weight.div_(s.view(-1, 1))
        else:
            prev.weight.div_(s)
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s)
        for lin in linears:
            lin.weight.mul_(s.to(lin.weight.device, lin.weight.dtype).view(1, -1))


def _quantizer(s: LayerSettings):
    return partial(fake_quantize, bits=s.bits, group_size=s.group_size, zero_point=not s.sym)


class AWQHandler:
    """The AWQ side of the sequential loop (SequentialOptions.staged=False)."""

    def __init__(self, model: nn.Module, variant: AWQVariant, settings: dict[str, LayerSettings],
                 family: awq_arch.Family, state_key: str, dtype: torch.dtype, n_samples: int):
        self.model, self.variant, self.settings, self.family = model, variant, settings, family
        self.state_key, self.dtype, self.n_samples = state_key, dtype, n_samples
        self.layers: dict[str, IntWeight] = {}
        self.searched = 0  # mappings searched by this process (a resumed block searches none)
        self._reset()

    def _reset(self) -> None:
        self._run: BlockRun | None = None
        self._stats: dict[tuple[str, ...], InputStats] = {}
        self._group_of: dict[str, tuple[str, ...]] = {}
        self._recorders: dict[str, CallRecorder] = {}
        self._active: list[awq_arch.Resolved] = []
        self._owner: dict[tuple[str, ...], list[awq_arch.Resolved]] = {}
        self._pending: set[tuple[str, ...]] = set()
        self._scales: dict[str, Tensor] = {}
        self._info: dict[str, dict] = {}
        self._state: dict[str, Tensor] = {}
        self._rows: list[dict] = []

    # -- the loop's protocol -------------------------------------------------------------------

    def targets(self, index: int, name: str, block: nn.Module) -> dict[str, nn.Module]:
        return {f"{name}.{sub}": mod for sub, mod in block.named_modules()
                if isinstance(mod, nn.Linear) and f"{name}.{sub}" in self.settings}

    def begin_block(self, run: BlockRun) -> None:
        self._reset()
        self._run = run
        rel = lambda full: full[len(run.name) + 1:]  # noqa: E731
        self._group_of = {rel(n): g.names for g in run.groups for n in g.names}
        self._pending = {g.names for g in run.groups}
        v = self.variant
        for r in self._resolve(run.block, run.name):
            quantized = [n for n in r.mapping.linears if n in self._group_of]
            if not quantized:
                continue
            if not r.foldable:
                log.debug("awq: %s: %s", run.name, r.why_not)
                continue
            owners = {self._group_of[n] for n in quantized}
            if len(owners) != 1:
                raise RuntimeError(f"{run.name}: {', '.join(quantized)} do not share one input tensor")
            self._owner.setdefault(owners.pop(), []).append(r)
            if r.mapping.inspect is not None:
                module = run.block.get_submodule(r.mapping.inspect)
                width = r.linears[0].in_features
                self._recorders[r.mapping.prev] = CallRecorder(
                    module, v.search_samples, self.dtype, working_bytes_per_token(module, width),
                    v.max_chunk_memory_mb << 20, token_stride=self._token_stride(r.mapping))

    def _token_stride(self, m: awq_arch.Mapping) -> int | None:
        """Every k-th token scores a token-wise module's search: as many tokens as
        `search_samples` whole samples hold, spread over all of them (None: whole samples)."""
        samples = self.variant.search_samples
        if not m.tokenwise or samples is None or samples >= self.n_samples:
            return None
        return max(1, self.n_samples // samples)

    def observe(self, group: InputGroup, x: Tensor) -> None:
        st = self._stats.get(group.names)
        if st is None:
            st = self._stats[group.names] = InputStats(dtype=self.dtype)
        st.add(x)

    def solve(self, group: InputGroup) -> None:
        for rec in self._recorders.values():  # the observing forward is over
            rec.remove()
        with reusing_freed_memory():
            for r in self._owner.get(group.names, []):
                self._search(r, group)
            self._pending.discard(group.names)
            if not self._pending:  # every scale is known: fold, clip and quantize the block
                run = self._run
                self._state, self._rows = self._apply(run.block, run.name, self._scales, None)
                self._recorders.clear()

    def finish_block(self, run: BlockRun) -> BlockResult:
        state, rows = self._state, self._rows
        self._reset()
        return BlockResult(state, rows)

    def restore_block(self, run: BlockRun, state: dict[str, Tensor]) -> None:
        scales = {k.removeprefix("scale."): v for k, v in state.items() if k.startswith("scale.")}
        clips = {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}
        self._apply(run.block, run.name, scales, clips)

    # -- search and apply ----------------------------------------------------------------------

    def _resolve(self, block: nn.Module, name: str) -> list[awq_arch.Resolved]:
        try:
            return awq_arch.resolve(self.family, block, name)
        except ValueError as e:
            raise UserError(f"model: {e}") from None

    def _search(self, r: awq_arch.Resolved, group: InputGroup) -> None:
        run, m, v = self._run, r.mapping, self.variant
        names = [n for n in m.linears if n in self._group_of]
        st = self._stats.get(group.names)
        if st is None or st.count == 0:
            log.warning("awq: %s.%s never ran on the calibration data; no scale for it", run.name, names[0])
            return
        t0 = time.perf_counter()
        settings = [self.settings[f"{run.name}.{n}"] for n in names]
        weights = [run.block.get_submodule(n).weight.detach() for n in names]
        quants = [_quantizer(s) for s in settings]
        w_mean = weight_abs_mean(weights, settings[0].group_size) if v.duo_scaling else None
        candidates = scale_candidates(st.mean_abs(), w_mean, v.n_grid, v.duo_scaling)
        if m.inspect is None:
            norm = st.count * sum(w.shape[0] for w in weights)
            loss_fn = lambda s: gram_loss(weights, st.H, s, quants) / norm  # noqa: E731
            tokens = st.count
        else:
            params = [n[len(m.inspect) + 1:] + ".weight" for n in names]
            recorder = self._recorders[m.prev]
            loss_fn = module_loss(recorder, params, weights, quants, run.device)
            tokens = recorder.tokens
        result = search_scales(candidates, loss_fn, v.coarse_grid)
        self.searched += 1
        secs = time.perf_counter() - t0
        self._scales[m.prev] = result.scales
        self._info[m.prev] = {"awq_prev": m.prev, "awq_ratio": result.ratio, "awq_loss": result.loss,
                              "awq_loss_unscaled": result.loss_unscaled, "awq_search_tokens": tokens,
                              "awq_candidates_scored": sum(x == x for x in result.losses),
                              "search_seconds": secs / len(names)}
        ratio = "none" if result.ratio is None else f"{result.ratio:.2f}"
        run.note(f"{m.prev} -> {'/'.join(n.rsplit('.', 1)[-1] for n in names)}: ratio {ratio}, "
                 f"loss {result.loss:.3g} (unscaled {result.loss_unscaled or float('nan'):.3g}) {secs:.1f} s")

    def _apply(self, block: nn.Module, name: str, scales: dict[str, Tensor],
               clips: dict[str, Tensor] | None) -> tuple[dict[str, Tensor], list[dict]]:
        """Fold `scales` (by previous op), clip (searching the bounds when `clips` is None) and
        quantize every target Linear of the block. Returns the resume state and report rows."""
        v = self.variant
        by_prev = {r.mapping.prev: r for r in self._resolve(block, name)}
        input_scale: dict[str, Tensor] = {}
        info: dict[str, dict] = {}
        state: dict[str, Tensor] = {}
        # in the family's order, whatever order `scales` came in (a restored state's is alphabetical):
        # two folds into one weight (up_proj's columns, then its rows) do not commute in floats
        for prev in sorted(scales, key=list(by_prev).index):
            s, r = scales[prev], by_prev[prev]
            fold_scale(r.prev, r.linears, s)
            state[f"scale.{prev}"] = s
            for n in r.mapping.linears:
                input_scale[n] = s
                info[n] = self._info.get(prev, {})
        rows = []
        for sub, lin in block.named_modules():
            full = f"{name}.{sub}"
            if not isinstance(lin, nn.Linear) or full not in self.settings:
                continue
            t0 = time.perf_counter()
            s_set = self.settings[full]
            w = lin.weight.detach().float().clone()  # the Linear is overwritten below
            st = self._stats.get(self._group_of.get(sub, ()))
            H = None
            if st is not None and st.H is not None:
                s_in = input_scale.get(sub)
                H = st.H if s_in is None else st.H / (s_in.view(-1, 1) * s_in.view(1, -1))
            if clips is not None:
                max_val = clips.get(sub)
            elif v.clip and sub not in self.family.no_clip and H is not None:
                max_val = clip_search(w, H, s_set.bits, s_set.group_size, not s_set.sym, v.clip_n_grid,
                                      v.clip_max_shrink)
            else:
                max_val = None
            wc = w if max_val is None else apply_clip(w, max_val)
            if max_val is not None:
                state[f"clip.{sub}"] = max_val
            q, sc, z = awq_quantize(wc, s_set.bits, s_set.group_size, not s_set.sym)
            layer = IntWeight(q.cpu(), sc.cpu(), z.cpu(), group_index(w.shape[1], s_set.group_size), s_set.bits)
            w_hat = layer.dequantize()
            with torch.no_grad():
                lin.weight.copy_(w_hat.to(lin.weight.device, lin.weight.dtype))
            self.layers[full] = layer
            if clips is None:
                row = {"module": full, "bits": s_set.bits, "group_size": s_set.group_size,
                       "output_error": output_error(w, w_hat, H) if H is not None else None,
                       "rel_error": relative_error(w, w_hat),
                       "clipped_groups": (float((max_val < w.abs().reshape(max_val.shape[0], max_val.shape[1], -1)
                                                 .amax(-1)).float().mean()) if max_val is not None else 0.0)}
                extra = info.get(sub, {})
                row.update(extra)
                row["seconds"] = time.perf_counter() - t0 + extra.get("search_seconds", 0.0)
                rows.append(row)
        return state, rows


def linears_in(block: nn.Module, name: str) -> list[str]:
    return [f"{name}.{sub}" for sub, m in block.named_modules() if isinstance(m, nn.Linear)]


class AWQQuantizer:
    method = "awq"
    version = "2"  # 2: token-wise modules' searches score every k-th token of every sample

    def quantize(self, model: nn.Module, variant: AWQVariant, calib: CalibrationSet | None,
                 out_dir: Path, ctx: QuantizeContext) -> QuantizeResult:
        if calib is None:
            raise UserError(f"variants: {variant.name}: method 'awq' needs a 'calibration' section")
        model_type = getattr(model.config, "model_type", None)
        problem = check_model(variant, model_type, model)
        if problem:
            raise UserError(f"variants: {variant.name}: {problem}")
        residency = ctx.blocks or EagerBlocks()
        if not residency.lazy:
            model.to("cpu")  # one block at a time goes to ctx.device
        targets = target_linears(model, variant)
        settings = {n: s for n, (_, s) in targets.items()}
        dtype = resolve_calib_dtype(variant.calib_dtype, ctx.device)
        bs = default_batch_size(calib.input_ids.shape[1])
        key = content_hash({"method": self.method, "version": self.version, "calibration": calib.key,
                            "variant": variant.model_dump(mode="json", exclude={"name", "save_dtype"}),
                            "batch_size": bs, "device": str(ctx.device), "dtype": str(dtype)})
        handler = AWQHandler(model, variant, settings, awq_arch.family_for(model_type), key, dtype,
                             calib.input_ids.shape[0])
        opts = SequentialOptions(device=ctx.device, batch_size=bs, staged=False, work_dir=ctx.work_dir,
                                 label=f"awq {variant.name}", autocast=None if dtype == torch.float32 else dtype,
                                 activation_budget=ctx.activation_budget_bytes, activation_dtype=ctx.activation_dtype,
                                 float_outputs=variant.propagate == "float")
        fmt = FORMATS[checkpoint_format(variant)]
        stream = CheckpointStream(out_dir, model, save_dtype(model, variant.save_dtype), ctx.max_shard_bytes)
        with stream:  # a failure removes what was written
            groups: dict[str, LayerGroups] = {}

            def block_done(i: int, name: str, block: nn.Module) -> None:
                """The block's quantized Linears leave the handler, packed, for the checkpoint."""
                packed = {}
                for n in linears_in(block, name):
                    layer = handler.layers.pop(n, None)
                    if layer is not None:  # else left dense (modules_to_not_convert)
                        packed[n] = packed_module(fmt, layer, targets[n][0])
                        groups[n] = LayerGroups(layer.in_features, layer.n_groups)
                stream.add_module(name, block, packed)

            result = run_sequential(model, calib.input_ids, handler, opts, ctx.progress, residency, block_done)
            stream.add_outer(model, residency)
            qc, extra_json = fmt.checkpoint_config(variant, groups, *block_linears(model))
            stream.finish(model, qc, ctx.tokenizer, extra_json)
        if result.resumed:
            log.info("awq %s: blocks %s re-applied from the saved search in %s (no search); %d blocks searched now",
                     variant.name, result.resumed, ctx.work_dir, len(result.solved))
        return QuantizeResult(fmt.writes, qc, result.report, {
            "calib_dtype": str(dtype), "resumed_blocks": result.resumed, "solved_blocks": result.solved,
            "searched_mappings": handler.searched, "block_seconds": [round(t, 3) for _, t in result.block_seconds]})
