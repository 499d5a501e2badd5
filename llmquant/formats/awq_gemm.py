"""The AWQ GEMM checkpoint layout (AutoAWQ `WQLinear_GEMM`, GPTQModel's AWQ GEMM) — what
vLLM's `awq` and `awq_marlin` loaders and transformers' AWQ path read.

Per quantized Linear `name` (weight [out, in]), groups of `group_size` input columns:
  name.qweight  int32 [in, out * bits / 32]       packed along the OUTPUT dim, interleaved
  name.qzeros   int32 [in / group, out * bits / 32]   true zero points, same packing
  name.scales   fp16  [in / group, out]
  name.bias     (if the layer has one)
  no g_idx: groups are always contiguous runs of input columns.
Dequantised: w[o, i] = scales[i // group, o] * (q[i, o] - zeros[i // group, o]).

The interleave: a 32-bit word holds the 32/bits consecutive output columns 0..n-1 of its
slot, but value k (bits [k*bits, (k+1)*bits)) is column ORDER[k], not column k:
  4-bit: ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
  8-bit: ORDER = [0, 2, 1, 3]
Checked against public code (read, not copied): AutoAWQ `awq/modules/linear/gemm.py`
(`WQLinear_GEMM.from_linear`: `qweight[:, col] |= intweight[:, col*8 + order_map[i]] << 4*i`
with order_map [0,2,4,6,1,3,5,7]); vLLM `quantization/utils/marlin_utils.py`
(`awq_to_marlin_zero_points` undoes the interleave [0,2,4,6,1,3,5,7] for 4 bits and
[0,2,1,3] for 8 bits); vLLM's `awq_triton.py` dequantizer applies the inverse
[0,4,1,5,2,6,3,7]. AutoAWQ itself only writes 4 bits; 8-bit AWQ is read by vLLM's awq_marlin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import Tensor

from .bitpack import pack_cols, unpack_cols
from .detect import QuantSummary
from .format import CheckpointFormat, packed_compute_note
from .intweight import IntWeight
from .modules import ModuleQuant, group_size_from, layer_prefixes
from .vllm_compat import awq_verdict

log = logging.getLogger("llmquant")

FORMAT = "awq-gemm"
ORDER = {4: (0, 2, 4, 6, 1, 3, 5, 7), 8: (0, 2, 1, 3)}
BITS = tuple(ORDER)


def _per_word(bits: int) -> int:
    if bits not in ORDER:
        raise ValueError(f"AWQ GEMM stores {' or '.join(map(str, BITS))}-bit weights, not {bits}-bit")
    return 32 // bits


def interleave(values: Tensor, bits: int) -> Tensor:
    """Reorder the columns of [rows, out] so plain little-endian packing gives AWQ's order."""
    per = _per_word(bits)
    rows, out = values.shape
    if out % per:
        raise ValueError(f"{out} output columns cannot be packed at {bits} bits (need a multiple of {per})")
    order = torch.tensor(ORDER[bits])
    return values.reshape(rows, out // per, per)[:, :, order].reshape(rows, out)


def deinterleave(values: Tensor, bits: int) -> Tensor:
    """Inverse of `interleave`."""
    per = _per_word(bits)
    rows, out = values.shape
    inverse = torch.argsort(torch.tensor(ORDER[bits]))
    return values.reshape(rows, out // per, per)[:, :, inverse].reshape(rows, out)


def pack_awq(values: Tensor, bits: int) -> Tensor:
    """[rows, out] integers in [0, 2**bits) -> int32 [rows, out * bits / 32] in AWQ's order."""
    return pack_cols(interleave(values.to(torch.int32), bits), bits)


def unpack_awq(packed: Tensor, bits: int) -> Tensor:
    """int32 [rows, out * bits / 32] -> int32 [rows, out]."""
    return deinterleave(unpack_cols(packed, bits), bits)


def contiguous_groups(layer: IntWeight) -> int:
    """The group size of a layer whose groups are contiguous runs of input columns (AWQ has no g_idx)."""
    in_f, n_groups = layer.in_features, layer.n_groups
    if in_f % n_groups:
        raise ValueError(f"{n_groups} groups do not divide in_features {in_f}")
    gs = in_f // n_groups
    expected = torch.arange(in_f, dtype=torch.int32) // gs
    if not torch.equal(layer.g_idx.to(torch.int32), expected):
        raise ValueError("AWQ GEMM cannot store act-order (permuted) groups: it has no g_idx")
    return gs


def pack_layer(layer: IntWeight) -> dict[str, Tensor]:
    """Tensors for the checkpoint (without the `name.` prefix). Zeros are stored as they are."""
    contiguous_groups(layer)
    zeros = layer.zeros.round().to(torch.int32)
    if (zeros < 0).any() or (zeros >= (1 << layer.bits)).any():
        raise ValueError(f"zero points out of the {layer.bits}-bit range")
    return {
        "qweight": pack_awq(layer.q.t().contiguous(), layer.bits),
        "qzeros": pack_awq(zeros, layer.bits),
        "scales": layer.scales.to(torch.float16).contiguous(),
    }


def unpack_layer(tensors: dict[str, Tensor], bits: int) -> IntWeight:
    """Read one layer. Without `qzeros` (zero_point: false) the grid is symmetric: zero 2**(bits-1)."""
    scales = tensors["scales"]
    n_groups, out_f = scales.shape
    q = unpack_awq(tensors["qweight"], bits).t().contiguous()  # [out, in]
    in_f = q.shape[1]
    if q.shape[0] != out_f:
        raise ValueError(f"qweight holds {q.shape[0]} output columns, scales {out_f}")
    if in_f % n_groups:
        raise ValueError(f"{n_groups} groups do not divide in_features {in_f}")
    if "qzeros" in tensors:
        zeros = unpack_awq(tensors["qzeros"], bits).float()
    else:
        zeros = torch.full((n_groups, out_f), float(1 << (bits - 1)))
    g_idx = torch.arange(in_f, dtype=torch.int32) // (in_f // n_groups)
    return IntWeight(q=q, scales=scales.float(), zeros=zeros, g_idx=g_idx, bits=bits)


def quantization_config(bits: int, group_size: int, zero_point: bool = True,
                        modules_to_not_convert: list[str] | None = None) -> dict:
    """`quantization_config` for config.json, the keys transformers and vLLM read."""
    return {
        "quant_method": "awq",
        "bits": bits,
        "group_size": group_size,
        "zero_point": zero_point,
        "version": "gemm",
        "modules_to_not_convert": modules_to_not_convert,
    }


def config_bits(qc: dict) -> int | None:
    """Bits from an AWQ config (transformers writes `bits`, AutoAWQ's own file `w_bit`)."""
    v = qc.get("bits", qc.get("w_bit"))
    return int(v) if v is not None else None


def config_group_size(qc: dict) -> int | None:
    v = qc.get("group_size", qc.get("q_group_size"))
    return int(v) if v is not None else None


def config_version(qc: dict) -> str:
    return str(qc.get("version", "gemm")).lower()


def read_layers(path, info, state: dict[str, Tensor]) -> Iterator[tuple[str, IntWeight]]:
    """Unpack each `*.qweight` layer of an AWQ GEMM checkpoint in turn (pops the tensors it uses)."""
    from ..errors import UserError

    qc = info.quant_config
    version = config_version(qc)
    if version != "gemm":
        raise UserError(f"{path}: AWQ version {version!r} is not supported; supported: gemm "
                        "(re-export with version='gemm'; GEMV layouts are not readable)")
    bits = config_bits(qc)
    if bits not in ORDER:
        raise UserError(f"{path}: quantization_config.bits: {bits!r} is not supported for AWQ; supported: 4, 8")
    for name in sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".qweight")}):
        t = {leaf: state.pop(f"{name}.{leaf}") for leaf in ("qweight", "qzeros", "scales")
             if f"{name}.{leaf}" in state}
        if "scales" not in t:
            raise UserError(f"{path}: {name}.scales is missing")
        try:
            yield name, unpack_layer(t, bits)
        except ValueError as e:
            raise UserError(f"{path}: {name}: {e}") from None


def shape_problem(in_features: int, out_features: int, bits: int, group_size: int) -> str | None:
    """Why a [out, in] Linear cannot be stored as AWQ GEMM at these settings, or None when it can:
    contiguous groups must divide the input, and qweight / qzeros pack the OUTPUT dim."""
    if bits not in ORDER:
        return f"AWQ GEMM stores {' or '.join(map(str, BITS))}-bit weights, not {bits}-bit"
    if group_size != -1 and in_features % group_size:
        return f"group size {group_size} does not divide in_features {in_features}"
    per = 32 // bits
    if out_features % per:
        return f"out_features {out_features} is not a multiple of {per} (needed to pack {bits}-bit qweight)"
    return None


def checkpoint_config(settings, layers: dict[str, IntWeight], prefix: str, block_linears: list[str],
                      extra_config: dict | None = None) -> tuple[dict, dict]:
    """CheckpointFormat.checkpoint_config: the decoder blocks' Linears not in `layers` are left
    dense (modules_to_not_convert: vLLM and transformers keep them dense). `settings`: bits,
    group_size, zero_point (a recipe AWQ variant). `layers`' values: IntWeights, or anything with
    their `in_features` and `n_groups` (format.LayerGroups: a streaming quantizer keeps no
    weights), or tensors already packed (not checked). No extra files."""
    ints = [layer for layer in layers.values() if hasattr(layer, "n_groups")]
    used = {layer.in_features // layer.n_groups for layer in ints}
    if any(layer.in_features // layer.n_groups != (layer.in_features if settings.group_size == -1
                                                   else settings.group_size) for layer in ints):
        log.warning("awq %s: modules use group sizes %s: vLLM reads one group_size (%d) from quantization_config, "
                    "so this checkpoint loads in llmquant but not in vLLM", getattr(settings, "name", "?"),
                    sorted(used), settings.group_size)
    skipped = [n for n in block_linears if n not in layers]
    # a method without AWQ's zero_point option (RTN) stores its zeros: exact for either grid
    qc = quantization_config(settings.bits, settings.group_size, getattr(settings, "zero_point", True), skipped or None)
    qc.update(extra_config or {})
    return qc, {}


def summarize(qc: dict) -> QuantSummary:
    zp = qc.get("zero_point", True)
    return QuantSummary(f"awq-{config_version(qc)}", config_bits(qc), config_group_size(qc),
                        None if zp is None else not zp, False)


def modules(path, index: dict, qc: dict) -> list[ModuleQuant]:
    bits = config_bits(qc) or 4
    zp = qc.get("zero_point", True)
    out = []
    for name in layer_prefixes(index, ".qweight"):
        qw, sc = index[f"{name}.qweight"], index[f"{name}.scales"]
        if str(qc.get("version", "gemm")).lower() == "gemm":
            n_groups, out_f = sc.shape
            in_f = qw.shape[0]
            gs = group_size_from(in_f, n_groups, config_group_size(qc))
        else:  # AutoAWQ GEMV: qweight [out, in * bits / 32], scales [out, padded groups]
            out_f, in_f = qw.shape[0], qw.shape[1] * 32 // bits
            gs = config_group_size(qc) or -1
        out.append(ModuleQuant(name, in_f, out_f, bits, gs, not zp, sc.dtype))
    return out


def vllm_args(qc: dict) -> tuple[list[str], list[str]]:
    return [], ["AWQ: vLLM picks awq_marlin where it can; the plain AWQ kernel needs fp16 (--dtype half)"]


CHECKPOINT_FORMAT = CheckpointFormat(
    quant_method="awq",
    description="AWQ GEMM (AutoAWQ, GPTQModel)",
    summarize=summarize,
    modules=modules,
    shape_problem=shape_problem,
    vllm_verdict=awq_verdict,
    vllm_args=vllm_args,
    compute_note=packed_compute_note,
    read_layers=read_layers,
    pack=pack_layer,
    checkpoint_config=checkpoint_config,
    writes=FORMAT,
    vllm_dtype="half",
)
