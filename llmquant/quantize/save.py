"""Writing a model whose target layers were quantized to integers as a GPTQ v1 checkpoint."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..formats import gptq_v1
from ..formats.checkpoint import save_dtype, write_checkpoint
from ..formats.intweight import IntWeight
from ..recipe import WeightOnlyVariant
from .targets import find_blocks


def save_gptq_model(model: nn.Module, layers: dict[str, IntWeight | dict[str, Tensor]], variant: WeightOnlyVariant,
                    tokenizer, out_dir: Path, extra_config: dict | None = None) -> dict:
    """Pack `layers` (IntWeights, or tensors already packed by gptq_v1.pack_layer) and write the
    whole model as a GPTQ v1 checkpoint. Returns the quant config."""
    packed = {}
    for name, layer in layers.items():
        tensors = dict(layer) if isinstance(layer, dict) else gptq_v1.pack_layer(layer)
        bias = model.get_submodule(name).bias
        if bias is not None:
            tensors["bias"] = bias.detach()
        packed[name] = tensors
    prefix, _ = find_blocks(model)
    qc = gptq_v1.quantization_config(
        bits=variant.bits, group_size=variant.group_size, sym=variant.sym,
        lm_head="lm_head" in layers,
        dynamic=gptq_v1.dynamic_rules(variant.overrides, variant.bits, variant.group_size, variant.sym),
        **(extra_config or {}),
    )
    qc["modules_in_block_to_quantize"] = gptq_v1.modules_in_block(list(layers), prefix)
    quantize_config = {k: v for k, v in qc.items() if k != "modules_in_block_to_quantize"}
    write_checkpoint(out_dir, model, packed, qc, tokenizer, save_dtype(model, variant.save_dtype),
                     extra_json={"quantize_config.json": quantize_config})
    return qc
