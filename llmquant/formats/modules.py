"""Which Linear layers a checkpoint quantizes and how, from tensor names, shapes and dtypes
only (safetensors headers; a few tiny tensors such as compressed-tensors' `weight_shape`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from ..errors import UserError


@dataclass(frozen=True)
class ModuleQuant:
    name: str
    in_features: int
    out_features: int
    bits: int | None  # None for dense layers
    group_size: int | None  # -1: one group per row; None: not grouped (dense, LLM.int8)
    sym: bool | None = None
    scale_dtype: str | None = None

    @property
    def quantized(self) -> bool:
        return self.bits is not None


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str


def tensor_index(path: Path) -> dict[str, TensorMeta]:
    """Shapes and dtypes of every tensor in a directory's safetensors files (no data read)."""
    out = {}
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise UserError(f"{path}: no .safetensors weights found")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    s = h.get_slice(k)
                    out[k] = TensorMeta(tuple(s.get_shape()), s.get_dtype())
        except Exception as e:
            raise UserError(f"{f}: unreadable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return out


def read_small(path: Path, key: str):
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            if key in h.keys():
                return h.get_tensor(key)
    raise KeyError(key)


def layer_prefixes(index: dict, suffix: str) -> list[str]:
    return sorted(k[: -len(suffix)] for k in index if k.endswith(suffix))


def group_size_from(in_f: int, n_groups: int, declared: int | None = None) -> int:
    """The group size: the declared one when the tensors agree with it (a declared 64 on a
    64-wide layer is one group, not "per row"), else what the scale rows imply."""
    if declared is not None and declared > 0 and in_f % declared == 0 and in_f // declared == n_groups:
        return declared
    if declared == -1 and n_groups <= 1:
        return -1
    return -1 if n_groups <= 1 else in_f // n_groups


def gptq_dynamic(name: str, dynamic: dict | None) -> dict | None:
    """GPTQModel/vLLM `dynamic` rules for a module: None (no rule), {} or overrides; a
    "-:" rule returns {"skip": True}. Rules use re.match, first match wins."""
    for pattern, over in (dynamic or {}).items():
        sign, regex = (pattern[0], pattern[2:]) if pattern[:2] in ("+:", "-:") else ("+", pattern)
        if re.match(regex, name):
            return {"skip": True} if sign == "-" else dict(over)
    return None


def dense_linears(index: dict, quantized: set[str]) -> list[ModuleQuant]:
    """2-D `.weight` tensors of block layers and the output head that are stored unquantized."""
    out = []
    for k, meta in sorted(index.items()):
        if not k.endswith(".weight") or len(meta.shape) != 2 or meta.dtype not in ("F16", "BF16", "F32"):
            continue
        name = k[: -len(".weight")]
        if name in quantized or not (".layers." in name or ".h." in name or name.endswith("lm_head")):
            continue
        out_f, in_f = meta.shape
        out.append(ModuleQuant(name, in_f, out_f, None, None, None, meta.dtype))
    return out


def checkpoint_modules(path: Path, method: str, qc: dict) -> tuple[list[ModuleQuant], list[ModuleQuant]]:
    """(quantized modules, dense Linear-like layers) of a checkpoint directory; each format's
    `modules` (table.FORMATS) reads its own tensors."""
    from .table import FORMATS

    index = tensor_index(path)
    quantized = FORMATS[method].modules(path, index, qc) if method in FORMATS else []
    return quantized, dense_linears(index, {m.name for m in quantized})
