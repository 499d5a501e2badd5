"""Writing a quantized checkpoint directory: safetensors shards, config.json with its
`quantization_config`, the tokenizer and the generation config.

Safetensors only (no pickle). Tied weights are written once. Tensors that stay unquantized
are cast to the save dtype; packed tensors keep their own dtypes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..runs import atomic_write_json
from .stream import MAX_SHARD_BYTES


def save_dtype(model: nn.Module, choice: str) -> torch.dtype:
    """fp16 unless the model was trained in bf16 (fp16 could overflow it), or as asked."""
    if choice != "auto":
        return getattr(torch, choice)
    cfg_dtype = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if cfg_dtype in (torch.bfloat16, "bfloat16"):
        return torch.bfloat16
    return torch.float16


def _dedupe_tied(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop later names that share storage with an earlier one (tied lm_head)."""
    seen: set[tuple[int, int, tuple]] = set()
    out = {}
    for k, v in state.items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.device.type != "meta" and ident in seen:
            continue
        seen.add(ident)
        out[k] = v
    return out


def build_state_dict(model: nn.Module, packed: dict[str, dict[str, Tensor]], dtype: torch.dtype) -> dict[str, Tensor]:
    state = _dedupe_tied(model.state_dict())
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        owner, _, leaf = k.rpartition(".")
        if owner in packed and leaf == "weight":
            continue
        t = v.detach().cpu()
        out[k] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    for name, tensors in packed.items():
        for leaf, t in tensors.items():
            if leaf == "bias" and t.is_floating_point():
                t = t.to(dtype)
            out[f"{name}.{leaf}"] = t.detach().cpu().contiguous()
    return out


def write_safetensors(out_dir: Path, state: dict[str, Tensor], max_shard: int = MAX_SHARD_BYTES) -> list[str]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata=meta)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(out_dir / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    atomic_write_json(out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return names


def write_config(out_dir: Path, model: nn.Module, dtype: torch.dtype, quant_config: dict | None) -> None:
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    dtype_name = str(dtype).removeprefix("torch.")
    cfg["dtype"] = dtype_name
    cfg["torch_dtype"] = dtype_name  # readers older than transformers 5 look for this name
    if quant_config is not None:
        cfg["quantization_config"] = quant_config
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")


def write_checkpoint(out_dir: Path, model: nn.Module, packed: dict[str, dict[str, Tensor]],
                     quant_config: dict | None, tokenizer: Any, dtype: torch.dtype,
                     extra_json: dict[str, Any] | None = None) -> None:
    """Write everything a loader needs into `out_dir` (the caller makes it atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir, build_state_dict(model, packed, dtype))
    write_metadata(out_dir, model, quant_config, tokenizer, dtype, extra_json)


def write_metadata(out_dir: Path, model: nn.Module, quant_config: dict | None, tokenizer: Any, dtype: torch.dtype,
                   extra_json: dict[str, Any] | None = None) -> None:
    """Everything but the tensors: config.json, the generation config, the tokenizer, extra JSON files."""
    write_config(out_dir, model, dtype, quant_config)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    for name, obj in (extra_json or {}).items():
        (out_dir / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
