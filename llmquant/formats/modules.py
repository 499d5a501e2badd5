"""Which Linear layers a checkpoint quantizes and how, from tensor names, shapes and dtypes
only (safetensors headers; a few tiny tensors such as compressed-tensors' `weight_shape`).
"""

from __future__ import annotations

import json
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


def _prefixes(index: dict, suffix: str) -> list[str]:
    return sorted(k[: -len(suffix)] for k in index if k.endswith(suffix))


def _group(in_f: int, n_groups: int, declared: int | None = None) -> int:
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


def gptq_modules(index: dict, qc: dict) -> list[ModuleQuant]:
    out = []
    for name in _prefixes(index, ".qweight"):
        qw, sc = index[f"{name}.qweight"], index[f"{name}.scales"]
        n_groups, out_f = sc.shape
        g = index.get(f"{name}.g_idx")
        over = gptq_dynamic(name, qc.get("dynamic")) or {}
        if g is not None:
            in_f = g.shape[0]
            bits = qw.shape[0] * 32 // in_f
        else:
            bits = int(over.get("bits", qc.get("bits", 4)))
            in_f = qw.shape[0] * 32 // bits
        out.append(ModuleQuant(name, in_f, out_f, bits, _group(in_f, n_groups, over.get("group_size", qc.get("group_size"))),
                               bool(over.get("sym", qc.get("sym", True))), sc.dtype))
    return out


def awq_modules(index: dict, qc: dict) -> list[ModuleQuant]:
    from .awq_gemm import config_bits, config_group_size

    bits = config_bits(qc) or 4
    zp = qc.get("zero_point", True)
    out = []
    for name in _prefixes(index, ".qweight"):
        qw, sc = index[f"{name}.qweight"], index[f"{name}.scales"]
        if str(qc.get("version", "gemm")).lower() == "gemm":
            n_groups, out_f = sc.shape
            in_f = qw.shape[0]
            gs = _group(in_f, n_groups, config_group_size(qc))
        else:  # AutoAWQ GEMV: qweight [out, in * bits / 32], scales [out, padded groups]
            out_f, in_f = qw.shape[0], qw.shape[1] * 32 // bits
            gs = config_group_size(qc) or -1
        out.append(ModuleQuant(name, in_f, out_f, bits, gs, not zp, sc.dtype))
    return out


def ct_modules(path: Path, index: dict, qc: dict) -> list[ModuleQuant]:
    from .compressed_tensors import scheme_for, schemes

    try:
        found = schemes(qc)
    except ValueError:
        found = []
    out = []
    for name in _prefixes(index, ".weight_packed"):
        out_f, in_f = (int(v) for v in read_small(path, f"{name}.weight_shape").tolist())
        sc = index[f"{name}.weight_scale"]
        n_groups = sc.shape[1] if len(sc.shape) == 2 else 1
        s = scheme_for(name, found) if found else None
        bits = s.bits if s else round(32 * index[f"{name}.weight_packed"].shape[1] / in_f)
        out.append(ModuleQuant(name, in_f, out_f, bits, _group(in_f, n_groups, s.group_size if s else None),
                               s.symmetric if s else f"{name}.weight_zero_point" not in index, sc.dtype))
    return out


def bnb_modules(path: Path, index: dict, qc: dict) -> list[ModuleQuant]:
    out = []
    for name in _prefixes(index, ".SCB"):  # LLM.int8: int8 weight [out, in], fp32 row scales
        out_f, in_f = index[f"{name}.weight"].shape
        out.append(ModuleQuant(name, in_f, out_f, 8, None, True, index[f"{name}.SCB"].dtype))
    for key in sorted(k for k in index if ".weight.quant_state.bitsandbytes__" in k):
        name = key.split(".weight.quant_state.")[0]
        state = json.loads(bytes(read_small(path, key).tolist()).decode())
        out_f, in_f = state["shape"]
        out.append(ModuleQuant(name, in_f, out_f, 4, int(state.get("blocksize", 64)), True,
                               state.get("dtype", "").removeprefix("torch.") or None))
    return out


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
    """(quantized modules, dense Linear-like layers) of a checkpoint directory."""
    index = tensor_index(path)
    readers = {"gptq": lambda: gptq_modules(index, qc), "awq": lambda: awq_modules(index, qc),
               "compressed-tensors": lambda: ct_modules(path, index, qc),
               "bitsandbytes": lambda: bnb_modules(path, index, qc)}
    quantized = readers[method]() if method in readers else []
    return quantized, dense_linears(index, {m.name for m in quantized})
