"""Loading any checkpoint for evaluation: one entry point, format detected from config.json.

`load_checkpoint(path)` gives a ready nn.Module on the chosen device and dtype. Packed
formats are read by our own modules (no GPU, no gptqmodel needed): each format's
`read_layers` (table.FORMATS) unpacks its layers one at a time, popping the tensors it
consumes, so a loader holds at most one layer's unpacked integers beside the packed modules;
a format with a whole loader of its own names `load`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..errors import UserError
from ..loading.models import load_tokenizer
from ..loading.runtime import DTYPES
from ..loading.sources import is_hf_dir, read_config_json, weights_size
from .table import FORMATS, quantized_methods

log = logging.getLogger("llmquant")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    format: str  # "hf", "gguf", "gptq-v1", ...
    method: str  # quant method as the checkpoint names it, "none" for dense
    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    desc_act: bool | None = None
    quant_config: dict = field(default_factory=dict)
    size_bytes: int = 0


def safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{path}: no .safetensors weights found")
    return files


def read_tensors(path: Path, names: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """All (or the selected) tensors of a directory's safetensors files."""
    out: dict[str, Tensor] = {}
    for f in safetensors_files(path):
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    if names is None or names(k):
                        out[k] = h.get_tensor(k)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise UserError(f"{f}: unreadable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return out


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """What a checkpoint is, from its metadata only (no weights read)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return CheckpointInfo(path, "gguf", "gguf", size_bytes=weights_size(path))
    if not path.exists():
        raise UserError(f"{path}: not found")
    if not path.is_dir() or not is_hf_dir(path):
        raise UserError(f"{path}: not a model directory (no config.json) or .gguf file")
    cfg = read_config_json(path)
    qc = cfg.get("quantization_config") or {}
    method = qc.get("quant_method", "none")
    size = weights_size(path)
    if method == "none":
        return CheckpointInfo(path, "hf", "none", size_bytes=size)
    if method not in FORMATS:
        raise UserError(
            f"{path}: quantization_config.quant_method {method!r} is not supported; "
            f"supported: {', '.join(quantized_methods())} and unquantized checkpoints"
        )
    q = FORMATS[method].summarize(qc)
    return CheckpointInfo(path, q.format, method, bits=q.bits, group_size=q.group_size,
                          sym=q.sym, desc_act=q.desc_act, quant_config=qc, size_bytes=size)


def empty_model(path: Path, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    """The architecture with parameters on the meta device (buffers such as rotary inv_freq real)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def finish_loading(model: nn.Module, state: dict[str, Tensor], dtype: torch.dtype, path: Path) -> nn.Module:
    """Assign the checkpoint's tensors, tie weights, and check nothing is missing."""
    float_state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    result = model.load_state_dict(float_state, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    still_meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    if still_meta:
        raise UserError(f"{path}: checkpoint is missing tensors: {', '.join(still_meta[:5])}"
                        + (f" and {len(still_meta) - 5} more" if len(still_meta) > 5 else ""))
    if result.unexpected_keys:
        log.warning("%s: ignored %d unexpected tensors (e.g. %s)", path, len(result.unexpected_keys),
                    result.unexpected_keys[0])
    return model.eval()


def load_packed(path: Path, info: CheckpointInfo, dtype: torch.dtype, trust_remote_code: bool = False,
                compile_kernels: bool = False) -> nn.Module:
    """Shared loader for integer weight-only formats: unpack layers, build QuantLinear modules
    (with `compile_kernels`, their prefill dequantization is fused by torch.compile)."""
    from .kernels import compiled_dequant
    from .qlinear import QuantLinear

    state = read_tensors(path)
    model = empty_model(path, dtype, trust_remote_code)
    dequant = compiled_dequant() if compile_kernels else None
    built = 0
    for name, weight in FORMATS[info.method].read_layers(path, info, state):  # one layer unpacked at a time
        bias = state.pop(f"{name}.bias", None)
        set_module(model, name, QuantLinear(weight, bias.to(dtype) if bias is not None else None, dequant))
        built += 1
    if not built:
        raise UserError(f"{path}: config says {info.method} but no packed layers were found")
    return finish_loading(model, state, dtype, path)


def load_checkpoint(path: Path, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
                    compile_kernels: bool = False) -> tuple[nn.Module, Any, CheckpointInfo]:
    """(model, tokenizer, info) for any supported checkpoint, ready for evaluation.
    `compile_kernels`: fuse packed layers' dequantization with torch.compile (bit-identical)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    info = inspect_checkpoint(path)
    torch_dtype = DTYPES[dtype]
    if info.format == "gguf":
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
        model.hf_quantizer = None
        return model.to(device).eval(), tok, info
    tok = load_tokenizer(path, trust_remote_code)
    fmt = FORMATS[info.method]
    if fmt.load:  # dense checkpoints and formats with a loader of their own
        model = fmt.load(path, info, torch_dtype, trust_remote_code, device)
    else:
        model = load_packed(path, info, torch_dtype, trust_remote_code, compile_kernels)
    return model.to(device), tok, info


def compute_note(info: CheckpointInfo, dtype: str, device: str = "cpu") -> str:
    """How a checkpoint computes when evaluated in `dtype` (recorded with its result)."""
    if info.format == "gguf":
        return f"GGUF weights de-quantized by transformers to {dtype} at load"
    return FORMATS[info.method].compute_note(info, dtype, device)


def extra_resident_bytes(model: nn.Module, info: CheckpointInfo) -> int:
    """Memory a format keeps outside parameters and buffers (bitsandbytes quant states)."""
    fmt = FORMATS.get(info.method)  # a GGUF file has none: transformers de-quantized it
    return fmt.extra_resident_bytes(model) if fmt is not None and fmt.extra_resident_bytes else 0
