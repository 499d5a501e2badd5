"""Writing a model whose target layers were quantized to integers as a GPTQ v1 checkpoint."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..formats import gptq_v1
from ..formats.checkpoint import save_dtype, write_checkpoint
from ..formats.intweight import IntWeight
from .config import WeightOnlyVariant
from .targets import find_blocks


def gptq_config(layer_names: list[str], prefix: str, variant: WeightOnlyVariant,
                extra_config: dict | None = None) -> tuple[dict, dict]:
    """(quantization_config for config.json, quantize_config.json) of a GPTQ v1 checkpoint whose
    quantized Linears are `layer_names` (in model order)."""
    qc = gptq_v1.quantization_config(
        bits=variant.bits, group_size=variant.group_size, sym=variant.sym,
        lm_head="lm_head" in layer_names,
        dynamic=gptq_v1.dynamic_rules(variant.overrides, variant.bits, variant.group_size, variant.sym),
        **(extra_config or {}),
    )
    qc["modules_in_block_to_quantize"] = gptq_v1.modules_in_block(list(layer_names), prefix)
    quantize_config = {k: v for k, v in qc.items() if k != "modules_in_block_to_quantize"}
    return qc, quantize_config


def pack_gptq(layer: IntWeight | dict[str, Tensor], module: nn.Module) -> dict[str, Tensor]:
    """GPTQ v1 tensors of one Linear (packed now unless already), with its bias."""
    tensors = dict(layer) if isinstance(layer, dict) else gptq_v1.pack_layer(layer)
    if module.bias is not None:
        tensors["bias"] = module.bias.detach()
    return tensors


def save_gptq_model(model: nn.Module, layers: dict[str, IntWeight | dict[str, Tensor]], variant: WeightOnlyVariant,
                    tokenizer, out_dir: Path, extra_config: dict | None = None) -> dict:
    """Pack `layers` (IntWeights, or tensors already packed by gptq_v1.pack_layer) and write the
    whole model as a GPTQ v1 checkpoint from memory. Returns the quant config. (The quantizers
    stream their checkpoints instead: checkpoint_stream.py; this writer is their reference.)"""
    packed = {name: pack_gptq(layer, model.get_submodule(name)) for name, layer in layers.items()}
    prefix, _ = find_blocks(model)
    qc, quantize_config = gptq_config(list(layers), prefix, variant, extra_config)
    write_checkpoint(out_dir, model, packed, qc, tokenizer, save_dtype(model, variant.save_dtype),
                     extra_json={"quantize_config.json": quantize_config})
    return qc
