"""Writing a model whose target Linears were quantized to integers, in any writable format of
the table (table.FORMATS: `pack` and `checkpoint_config`), from memory in one call.

The quantizers stream their checkpoints block by block instead (quantize/checkpoint_stream.py,
with the same format's `pack` and `checkpoint_config`); this writer is their reference, and
writes the same tensors (a checkpoint that fits one shard is byte-identical).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .checkpoint import save_dtype, write_checkpoint
from .format import CheckpointFormat
from .intweight import IntWeight
from .table import FORMATS, format_named


def packed_module(fmt: CheckpointFormat, layer: IntWeight | dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    """One Linear's tensors in `fmt` (packed now unless already packed), with its bias."""
    tensors = dict(layer) if isinstance(layer, dict) else fmt.pack(layer)
    if module.bias is not None:
        tensors["bias"] = module.bias.detach()
    return tensors


def block_linears(model: nn.Module) -> tuple[str, list[str]]:
    """(the decoder blocks' path, every Linear inside them in model order)."""
    from ..quantize.targets import find_blocks

    prefix, blocks = find_blocks(model)
    return prefix, [f"{prefix}.{i}.{sub}" for i, block in enumerate(blocks)
                    for sub, m in block.named_modules() if isinstance(m, nn.Linear)]


def write_quantized(model: nn.Module, layers: dict[str, IntWeight | dict[str, Tensor]], method: str, settings: Any,
                    tokenizer: Any, out_dir: Path, extra_config: dict | None = None) -> dict:
    """Pack `layers` (IntWeights in model order, or tensors the format already packed) in the
    format `method` (a table.FORMATS key such as "gptq", or the format's written name such as
    "gptq-v1") and write the whole model to `out_dir`: tensors left
    unquantized in the save dtype (formats.checkpoint.save_dtype of `settings.save_dtype`),
    config.json with the format's quantization_config (`extra_config` merged into it), the
    format's extra JSON files, the generation config and the tokenizer. Returns the
    quantization_config. `settings`: the recipe variant (bits, group_size, sym, overrides, ...)."""
    fmt = format_named(method)
    if not fmt.writable:
        raise ValueError(f"llmquant does not write {method!r} checkpoints "
                         f"(writable: {', '.join(m for m in FORMATS if FORMATS[m].writable)})")
    packed = {name: packed_module(fmt, layer, model.get_submodule(name)) for name, layer in layers.items()}
    prefix, linears = block_linears(model)
    qc, extra_json = fmt.checkpoint_config(settings, layers, prefix, linears, extra_config)
    write_checkpoint(out_dir, model, packed, qc, tokenizer, save_dtype(model, settings.save_dtype),
                     extra_json=extra_json or None)
    return qc
