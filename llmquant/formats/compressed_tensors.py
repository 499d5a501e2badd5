"""compressed-tensors `pack-quantized` checkpoints (llm-compressor's W4A16 / W8A16 output).

config.json `quantization_config`:
  quant_method: "compressed-tensors", format: "pack-quantized" (newer versions may also put
  a `format` in each scheme), quantization_status: "compressed",
  config_groups: {name: {targets: ["Linear" | "re:<regex>" | module name],
                         weights: {num_bits, type: "int", symmetric, strategy: "group" |
                                   "channel", group_size, actorder}, input_activations: null}},
  ignore: [module names or "re:<regex>"] (left dense).
Per quantized Linear `name` (weight [out, in]):
  name.weight_packed      int32 [out, ceil(in * bits / 32)]  packed along the INPUT dim
  name.weight_scale       float [out, n_groups]  (channel strategy: [out, 1])
  name.weight_zero_point  asymmetric only: int32 [ceil(out * bits / 32), n_groups], packed
                          along the OUTPUT dim (older releases: int8 [out, n_groups])
  name.weight_g_idx       int32 [in] (actorder "group" only)
  name.weight_shape       int [2] = (out, in)
Values are stored signed (q in [-2**(bits-1), 2**(bits-1))) and packed with an offset of
2**(bits-1), little-endian, 32/bits per word: value k of a word is element k of its run.
Dequantised: w = scale * (q_signed - zp_signed) = scale * (q_stored - zp_stored), which is
IntWeight's convention with the stored (offset) integers; symmetric means zero 2**(bits-1).

Checked against compressed-tensors' source (read, not copied):
`compressors/quantized_compressors/pack_quantized.py` (`pack_to_int32`: offset, bit shifts
`num_bits * i` along dim 1, zero point packed with `packed_dim=0`; `compression_param_info`
shapes) and `quantization/quant_args.py` / `quant_config.py` (field names, strategy values).
"""

from __future__ import annotations

from collections.abc import Iterator

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from .bitpack import pack_cols, pack_rows, unit, unpack_cols, unpack_rows
from .detect import QuantSummary
from .format import CheckpointFormat, packed_compute_note
from .intweight import IntWeight
from .modules import ModuleQuant, group_size_from, layer_prefixes, read_small
from .vllm_compat import ct_verdict

FORMAT = "compressed-tensors"
PACKED = "pack-quantized"
BITS = (4, 8)


@dataclass(frozen=True)
class WeightScheme:
    bits: int
    symmetric: bool
    strategy: str  # "group" | "channel"
    group_size: int  # -1 for channel
    actorder: str | None
    targets: tuple[str, ...]
    group: str  # config_groups key


def _matches(target: str, name: str, module_class: str = "Linear") -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or target == module_class or name.endswith("." + target)


def declared_schemes(qc: dict) -> list[WeightScheme]:
    """schemes(qc), or none where the config cannot be read (`inspect` still lists the tensors)."""
    try:
        return schemes(qc)
    except ValueError:
        return []


def schemes(qc: dict) -> list[WeightScheme]:
    """The weight schemes of a compressed-tensors config, in config order (raises ValueError)."""
    out = []
    for gname, g in (qc.get("config_groups") or {}).items():
        if not isinstance(g, dict):
            raise ValueError(f"config_groups.{gname}: preset names are not supported, give the scheme")
        w = g.get("weights")
        if not w:
            continue
        if g.get("input_activations"):
            raise ValueError(f"config_groups.{gname}: activations are quantized too "
                             "(W8A8 / FP8); supported: weight-only W4A16 / W8A16")
        if w.get("type", "int") != "int":
            raise ValueError(f"config_groups.{gname}.weights.type: {w.get('type')!r}; supported: int")
        bits = int(w.get("num_bits", 8))
        if bits not in BITS:
            raise ValueError(f"config_groups.{gname}.weights.num_bits: {bits}; supported: 4, 8")
        gs = w.get("group_size")
        strategy = w.get("strategy") or ("group" if gs and gs > 0 else "channel" if gs == -1 else "tensor")
        if strategy not in ("group", "channel"):
            raise ValueError(f"config_groups.{gname}.weights.strategy: {strategy!r}; supported: group, channel")
        out.append(WeightScheme(bits=bits, symmetric=bool(w.get("symmetric", True)), strategy=strategy,
                                group_size=int(gs) if strategy == "group" else -1,
                                actorder=w.get("actorder") if isinstance(w.get("actorder"), str) else
                                ("group" if w.get("actorder") is True else None),
                                targets=tuple(g.get("targets") or ()), group=gname))
    return out


def scheme_for(name: str, all_schemes: list[WeightScheme]) -> WeightScheme | None:
    for s in all_schemes:
        if any(_matches(t, name) for t in s.targets):
            return s
    return all_schemes[0] if len(all_schemes) == 1 else None


def is_ignored(name: str, ignore: list[str] | None) -> bool:
    return any(_matches(t, name, module_class="") for t in (ignore or []))


def formats_used(qc: dict) -> set[str]:
    """The storage formats a config names (top-level `format` and per-scheme `format`)."""
    found = {g.get("format") for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict)}
    found.discard(None)
    if not found or qc.get("format") not in (None, "mixed-precision"):
        found.add(qc.get("format") or "dense")
    return found


def pack_layer(layer: IntWeight, symmetric: bool, scale_dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """The tensors llm-compressor would write for this layer (contiguous groups or g_idx)."""
    bits = layer.bits
    if bits not in BITS:
        raise ValueError(f"pack-quantized stores 4- or 8-bit weights, not {bits}-bit")
    out = {
        "weight_packed": pack_cols(layer.q.to(torch.int32), bits),
        "weight_scale": layer.scales.t().to(scale_dtype).contiguous(),
        "weight_shape": torch.tensor([layer.out_features, layer.in_features], dtype=torch.int64),
    }
    if not symmetric:
        out["weight_zero_point"] = pack_rows(layer.zeros.round().to(torch.int32).t().contiguous(), bits)
    gs = layer.in_features // layer.n_groups
    if not torch.equal(layer.g_idx.to(torch.int32), torch.arange(layer.in_features, dtype=torch.int32) // gs):
        out["weight_g_idx"] = layer.g_idx.to(torch.int32)
    return out


def _zero_points(t: Tensor, bits: int, out_f: int, n_groups: int) -> Tensor:
    """True zero points [n_groups, out] (stored, offset grid) from any of the layouts seen."""
    offset = 1 << (bits - 1)
    if t.dtype == torch.int32 and t.shape[0] != out_f:  # packed along the output dim
        return unpack_rows(t, bits)[:out_f].t().float()
    if t.shape != (out_f, n_groups):
        raise ValueError(f"weight_zero_point has shape {tuple(t.shape)}; expected packed "
                         f"[{-(-out_f * bits // 32)}, {n_groups}] or [{out_f}, {n_groups}]")
    return (t.round().to(torch.int32) + offset).t().float()  # unpacked, signed


def unpack_layer(tensors: dict[str, Tensor], scheme: WeightScheme) -> IntWeight:
    bits = scheme.bits
    out_f, in_f = (int(v) for v in tensors["weight_shape"].tolist())
    packed = tensors["weight_packed"]
    if packed.dtype != torch.int32 or packed.shape[0] != out_f:
        raise ValueError(f"weight_packed is {packed.dtype} {tuple(packed.shape)}; expected int32 [{out_f}, ...]")
    q = unpack_cols(packed, bits)[:, :in_f].contiguous()
    scale = tensors["weight_scale"]
    if scale.dim() == 1:
        scale = scale.unsqueeze(1)
    n_groups = scale.shape[1]
    if scheme.symmetric or "weight_zero_point" not in tensors:
        zeros = torch.full((n_groups, out_f), float(1 << (bits - 1)))
    else:
        zeros = _zero_points(tensors["weight_zero_point"], bits, out_f, n_groups)
    g_idx = tensors.get("weight_g_idx")
    if g_idx is None or (g_idx < 0).any():
        if in_f % n_groups:
            raise ValueError(f"{n_groups} groups do not divide in_features {in_f}")
        g_idx = torch.arange(in_f, dtype=torch.int32) // (in_f // n_groups)
    return IntWeight(q=q, scales=scale.float().t().contiguous(), zeros=zeros, g_idx=g_idx.to(torch.int32),
                     bits=bits)


LEAVES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape")


def read_layers(path, info, state: dict[str, Tensor]) -> Iterator[tuple[str, IntWeight]]:
    """Unpack each `*.weight_packed` layer in turn (pops the tensors it uses)."""
    from ..errors import UserError

    qc = info.quant_config
    used = formats_used(qc)
    if used != {PACKED}:
        raise UserError(f"{path}: compressed-tensors format {', '.join(sorted(used))} is not supported; "
                        f"supported: {PACKED} (weight-only W4A16 / W8A16)")
    try:
        all_schemes = schemes(qc)
    except ValueError as e:
        raise UserError(f"{path}: quantization_config.{e}") from None
    if not all_schemes:
        raise UserError(f"{path}: quantization_config.config_groups has no weight scheme")
    for name in sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".weight_packed")}):
        scheme = scheme_for(name, all_schemes)
        if scheme is None:
            raise UserError(f"{path}: {name}: no config group targets this module "
                            f"(groups: {', '.join(s.group for s in all_schemes)})")
        t = {leaf: state.pop(f"{name}.{leaf}") for leaf in LEAVES if f"{name}.{leaf}" in state}
        try:
            yield name, unpack_layer(t, scheme)
        except (ValueError, KeyError) as e:
            raise UserError(f"{path}: {name}: {e}") from None


def shape_problem(in_features: int, out_features: int, bits: int, group_size: int) -> str | None:
    """Why a [out, in] Linear cannot be stored pack-quantized at these settings (as `pack_layer`
    writes it: whole words along the input, zero points packed along the output), or None."""
    if bits not in BITS:
        return f"pack-quantized stores {' or '.join(map(str, BITS))}-bit weights, not {bits}-bit"
    if group_size != -1 and in_features % group_size:
        return f"group size {group_size} does not divide in_features {in_features}"
    per, _ = unit(bits)
    if in_features % per:
        return f"in_features {in_features} is not a multiple of {per} (needed to pack {bits}-bit weight_packed)"
    if out_features % per:
        return f"out_features {out_features} is not a multiple of {per} (needed to pack {bits}-bit weight_zero_point)"
    return None


def summarize(qc: dict) -> QuantSummary:
    used = formats_used(qc)
    fmt = "ct-" + (PACKED if used == {PACKED} else "+".join(sorted(used)))
    found = declared_schemes(qc)
    if not found:
        return QuantSummary(fmt, None, None, None, None)
    s = found[0]
    return QuantSummary(fmt, s.bits, s.group_size, s.symmetric, s.actorder == "group")


def modules(path, index: dict, qc: dict) -> list[ModuleQuant]:
    found = declared_schemes(qc)
    out = []
    for name in layer_prefixes(index, ".weight_packed"):
        out_f, in_f = (int(v) for v in read_small(path, f"{name}.weight_shape").tolist())
        sc = index[f"{name}.weight_scale"]
        n_groups = sc.shape[1] if len(sc.shape) == 2 else 1
        s = scheme_for(name, found) if found else None
        bits = s.bits if s else round(32 * index[f"{name}.weight_packed"].shape[1] / in_f)
        out.append(ModuleQuant(name, in_f, out_f, bits, group_size_from(in_f, n_groups, s.group_size if s else None),
                               s.symmetric if s else f"{name}.weight_zero_point" not in index, sc.dtype))
    return out


def vllm_args(qc: dict) -> tuple[list[str], list[str]]:
    return [], []  # vLLM reads quantization_config itself


CHECKPOINT_FORMAT = CheckpointFormat(
    quant_method="compressed-tensors",
    description="compressed-tensors pack-quantized W4A16/W8A16 (llm-compressor)",
    summarize=summarize,
    modules=modules,
    shape_problem=shape_problem,
    vllm_verdict=ct_verdict,
    vllm_args=vllm_args,
    compute_note=packed_compute_note,
    read_layers=read_layers,
)
