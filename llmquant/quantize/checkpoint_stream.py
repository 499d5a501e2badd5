"""A quantized checkpoint written block by block, as the quantizer finishes each one.

    stream = CheckpointStream(out_dir, model, save_dtype, max_shard)
    stream.add_module("model.layers.0", block, {"model.layers.0.mlp.up_proj": {"qweight": ..., ...}})
    ...                                   # after the last block:
    stream.add_outer(model, blocks, packed_head)   # embeddings, final norm, lm_head
    stream.finish(model, quant_config, tokenizer, extra_json)

The tensors written are those `formats.checkpoint.build_state_dict` would write for the whole
model (the same names, dtypes and values: floating point tensors left unquantized in the save
dtype, packed tensors in their own, tied weights once), so a checkpoint that fits one shard is
byte-identical to the whole-model writer's; with several shards the boundaries follow the
streaming order (blocks first), not the state-dict order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..formats.checkpoint import write_metadata
from ..formats.stream import MAX_SHARD_BYTES, StreamedShards
from .lazy import Blocks, OwnTensors
from .targets import find_blocks


def own_tensors(module: nn.Module) -> dict[str, Tensor]:
    """A module's own parameters and persistent buffers (not its children's)."""
    out = {k: v for k, v in module._parameters.items() if v is not None}
    out.update({k: v for k, v in module._buffers.items()
                if v is not None and k not in module._non_persistent_buffers_set})
    return out


class CheckpointStream:
    def __init__(self, out_dir: Path, model: nn.Module, dtype: torch.dtype, max_shard: int = MAX_SHARD_BYTES):
        self.out_dir, self.dtype = Path(out_dir), dtype
        self.prefix, _ = find_blocks(model)
        self.shards = StreamedShards(self.out_dir, max_shard)

    def _cast(self, t: Tensor) -> Tensor:
        t = t.detach()
        return t.to(self.dtype) if t.is_floating_point() else t

    def add_module(self, name: str, module: nn.Module, packed: dict[str, dict[str, Tensor]]) -> None:
        """`module` (named `name` in the model), its Linears in `packed` written as their packed tensors."""
        given = {f"{layer}.{leaf}" for layer, tensors in packed.items() for leaf in tensors}
        seen: set[int] = set()  # a tensor shared inside the module is written once
        for sub, mod in module.named_modules():
            full_mod = f"{name}.{sub}" if sub else name
            for leaf, t in own_tensors(mod).items():
                if id(t) in seen:
                    continue
                seen.add(id(t))
                full = f"{full_mod}.{leaf}"
                if (full_mod in packed and leaf == "weight") or full in given:
                    continue
                self.shards.add(full, self._cast(t))
        self.add_packed(packed)

    def add_packed(self, packed: dict[str, dict[str, Tensor]]) -> None:
        for layer, tensors in packed.items():
            for leaf, t in tensors.items():
                if leaf == "bias" and t.is_floating_point():
                    t = t.to(self.dtype)
                self.shards.add(f"{layer}.{leaf}", t.detach())

    def add_outer(self, model: nn.Module, blocks: Blocks, packed: dict[str, dict[str, Tensor]] | None = None) -> None:
        """Every tensor outside the decoder blocks, one module at a time (read through `blocks`).
        A tensor shared by two modules (a tied lm_head) is written under its first name."""
        packed = packed or {}
        seen: set[int] = set()  # the model's own (meta or real) tensors: alive throughout
        for name, module in model.named_modules():
            if name == self.prefix or name.startswith(self.prefix + "."):
                continue
            own = own_tensors(module)
            todo = {leaf for leaf, t in own.items() if id(t) not in seen
                    and not (name in packed and (leaf == "weight" or leaf in packed[name]))}
            seen.update(id(t) for t in own.values())
            if not todo:
                continue
            view = OwnTensors(module)
            blocks.load(name, view, None, self.dtype)  # read straight into the save dtype (no float32 copy)
            try:
                for leaf, t in own_tensors(module).items():
                    if leaf in todo:
                        self.shards.add(f"{name}.{leaf}" if name else leaf, self._cast(t))
            finally:
                blocks.unload(name, view)
        self.add_packed(packed)

    def finish(self, model: nn.Module, quant_config: dict | None, tokenizer: Any,
               extra_json: dict[str, Any] | None = None) -> list[str]:
        files = self.shards.finish()
        write_metadata(self.out_dir, model, quant_config, tokenizer, self.dtype, extra_json)
        return files

    def abort(self) -> None:
        self.shards.abort()

    def __enter__(self) -> "CheckpointStream":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:  # a failed quantization leaves no partial checkpoint behind
            self.abort()
