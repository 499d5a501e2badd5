"""The GPTQ v1 checkpoint layout (AutoGPTQ / GPTQModel "gptq" format) — what vLLM's
`gptq`/`gptq_marlin` loaders and transformers' GPTQ path read.

Per quantized Linear `name` (weight [out, in]):
  name.qweight  int32 [in * bits / 32, out]        packed along the input dim
  name.qzeros   int32 [n_groups, out * bits / 32]   packed along the output dim, stores zero - 1
  name.scales   fp16  [n_groups, out]
  name.g_idx    int32 [in]                           group of each input column
  name.bias     (if the layer has one)
Dequantised: w[o, i] = scales[g_idx[i], o] * (q[i, o] - (stored_zero[g_idx[i], o] + 1)).
GPTQModel's internal "v2" keeps true zeros (no -1); `zero_offset` selects which is read.

Act-order (desc_act) checkpoints keep qweight rows in the *original* input order and store the
group of each input column in g_idx, which is then not monotonic. Checked in public code:
vLLM's gptq.py reference (non-exllama) path dequantizes as scales[g_idx] * (rows of qweight -
zeros[g_idx]) and multiplies with x in input order; its exllama path argsorts g_idx and
reorders qweight rows on load (gptq_shuffle); vLLM's marlin_utils.marlin_sort_g_idx argsorts
g_idx and the marlin repack permutes rows by it; GPTQModel's gptq.py un-permutes Q with the
inverse of the act-order permutation before packing and gives g_idx[i] = position of column i
in that permutation // group_size (with static_groups: i // group_size, monotonic).
`read_layers` below follows the same convention, so act-order output round-trips.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import UserError
from .bitpack import pack_cols, pack_rows, unpack_cols, unpack_rows, unit
from .detect import QuantSummary
from .format import CheckpointFormat, packed_compute_note
from .intweight import IntWeight
from .modules import ModuleQuant, gptq_dynamic, group_size_from, layer_prefixes
from .vllm_compat import MARLIN_GROUPS, MARLIN_TYPES, gptq_verdict

FORMAT = "gptq-v1"


def shape_problem(in_features: int, out_features: int, bits: int, group_size: int) -> str | None:
    """Why a [out, in] Linear cannot be stored at these settings, or None when it can."""
    per, _ = unit(bits)
    if group_size != -1 and in_features % group_size:
        return f"group size {group_size} does not divide in_features {in_features}"
    if in_features % per:
        return f"in_features {in_features} is not a multiple of {per} (needed to pack {bits}-bit qweight)"
    if out_features % per:
        return f"out_features {out_features} is not a multiple of {per} (needed to pack {bits}-bit qzeros)"
    return None


def pack_layer(layer: IntWeight) -> dict[str, Tensor]:
    """Tensors for the checkpoint (without the `name.` prefix)."""
    zeros = layer.zeros.round().to(torch.int32) - 1
    if (zeros < 0).any():
        raise ValueError("GPTQ v1 cannot store a zero point of 0 (it stores zero - 1)")
    return {
        "qweight": pack_rows(layer.q.t().contiguous(), layer.bits),
        "qzeros": pack_cols(zeros, layer.bits),
        "scales": layer.scales.to(torch.float16).contiguous(),
        "g_idx": layer.g_idx.to(torch.int32).contiguous(),
    }


def unpack_layer(tensors: dict[str, Tensor], bits: int, zero_offset: int = 1) -> IntWeight:
    """Read a layer's tensors; zero_offset=1 for v1 checkpoints, 0 for GPTQModel v2."""
    scales = tensors["scales"]
    n_groups, out_f = scales.shape
    q = unpack_rows(tensors["qweight"], bits).t().contiguous()
    zeros = unpack_cols(tensors["qzeros"], bits, out_f).float() + zero_offset
    g_idx = tensors.get("g_idx")
    if g_idx is None:
        g_idx = torch.arange(q.shape[1], dtype=torch.int32) // (q.shape[1] // n_groups)
    return IntWeight(q=q, scales=scales.float(), zeros=zeros[:n_groups], g_idx=g_idx, bits=bits)


def quantization_config(bits: int, group_size: int, sym: bool, desc_act: bool = False,
                        static_groups: bool = False, damp_percent: float | None = None,
                        true_sequential: bool | None = None, act_group_aware: bool | None = None, lm_head: bool = False,
                        dynamic: dict | None = None, tool: str = "llmquant") -> dict:
    """`quantization_config` for config.json, as transformers and vLLM read it."""
    from .. import __version__

    cfg = {
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": bits,
        "group_size": group_size,
        "sym": sym,
        "desc_act": desc_act,
        "static_groups": static_groups,
        "lm_head": lm_head,
        "meta": {"quantizer": [f"{tool}:{__version__}"]},
    }
    if damp_percent is not None:
        cfg["damp_percent"] = damp_percent
    if true_sequential is not None:
        cfg["true_sequential"] = true_sequential
    if act_group_aware is not None:
        cfg["act_group_aware"] = act_group_aware
    if dynamic:
        cfg["dynamic"] = dynamic
    return cfg


def dynamic_rules(overrides: list, base_bits: int, base_group: int, base_sym: bool) -> dict:
    """GPTQModel/vLLM `dynamic` rules from recipe overrides.

    vLLM applies them with re.match on module names ("-:" = left unquantized, "+:" = other
    settings); our overrides use re.search, hence the leading `.*`.
    """
    rules: dict[str, dict] = {}
    for o in overrides:
        pattern = f".*(?:{o.pattern})"
        if o.skip:
            rules[f"-:{pattern}"] = {}
            continue
        changed = {k: v for k, v in (("bits", o.bits), ("group_size", o.group_size), ("sym", o.sym))
                   if v is not None and v != {"bits": base_bits, "group_size": base_group, "sym": base_sym}[k]}
        if changed:
            rules[f"+:{pattern}"] = changed
    return rules


def modules_in_block(names: list[str], blocks_prefix: str) -> list[list[str]]:
    """`modules_in_block_to_quantize`: the in-block names quantized in at least one block."""
    rel = []
    for n in names:
        if n.startswith(blocks_prefix + "."):
            tail = n[len(blocks_prefix) + 1:].split(".", 1)[1]
            if tail not in rel:
                rel.append(tail)
    return [rel]


def read_layers(path, info, state: dict[str, Tensor]) -> Iterator[tuple[str, IntWeight]]:
    """Unpack each `*.qweight` layer of a GPTQ checkpoint in turn (pops the tensors it uses).

    Bits are read from each layer's shapes (rows of qweight = in * bits / 32), so per-module
    `dynamic` overrides need no special handling; v2 checkpoints store true zero points.
    """
    zero_offset = 0 if info.format == "gptq-v2" else 1
    for name in sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".qweight")}):
        t = {leaf: state.pop(f"{name}.{leaf}") for leaf in ("qweight", "qzeros", "scales", "g_idx")
             if f"{name}.{leaf}" in state}
        n_groups, _ = t["scales"].shape
        if "g_idx" in t:
            bits = t["qweight"].shape[0] * 32 // t["g_idx"].numel()
        else:  # some older files omit g_idx: groups are then contiguous
            bits = info.bits
            in_f = t["qweight"].shape[0] * 32 // bits
            t["g_idx"] = torch.arange(in_f, dtype=torch.int32) // (in_f // n_groups)
        yield name, unpack_layer(t, bits, zero_offset)


def checkpoint_config(settings, layers: dict, prefix: str, block_linears: list[str],
                      extra_config: dict | None = None) -> tuple[dict, dict]:
    """CheckpointFormat.checkpoint_config: (quantization_config for config.json, {"quantize_config.json":
    the same without modules_in_block_to_quantize}) of a GPTQ v1 checkpoint whose quantized Linears
    are `layers`' keys (in model order); `settings`: bits, group_size, sym, overrides (a recipe variant)."""
    names = list(layers)
    qc = quantization_config(
        bits=settings.bits, group_size=settings.group_size, sym=settings.sym,
        lm_head="lm_head" in names,
        dynamic=dynamic_rules(settings.overrides, settings.bits, settings.group_size, settings.sym),
        **(extra_config or {}),
    )
    qc["modules_in_block_to_quantize"] = modules_in_block(names, prefix)
    return qc, {"quantize_config.json": {k: v for k, v in qc.items() if k != "modules_in_block_to_quantize"}}


def summarize(qc: dict) -> QuantSummary:
    v2 = "gptq_v2" in (qc.get("checkpoint_format"), qc.get("format"))
    return QuantSummary("gptq-v2" if v2 else "gptq-v1", qc.get("bits"), qc.get("group_size"),
                        qc.get("sym"), qc.get("desc_act"))


def modules(path, index: dict, qc: dict) -> list[ModuleQuant]:
    """Quantized layers from tensor headers: bits from g_idx's length where present, `dynamic`
    overrides applied per module."""
    out = []
    for name in layer_prefixes(index, ".qweight"):
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
        out.append(ModuleQuant(name, in_f, out_f, bits,
                               group_size_from(in_f, n_groups, over.get("group_size", qc.get("group_size"))),
                               bool(over.get("sym", qc.get("sym", True))), sc.dtype))
    return out


def vllm_args(qc: dict) -> tuple[list[str], list[str]]:
    """No flag: vLLM reads quantization_config and picks gptq_marlin itself where it can."""
    bits, sym, group = qc.get("bits"), qc.get("sym"), qc.get("group_size")
    if (bits, sym) in MARLIN_TYPES and group in MARLIN_GROUPS:
        notes = [f"GPTQ {bits}-bit sym, group {group}: vLLM picks its gptq_marlin kernel itself"]
    else:
        notes = [f"GPTQ {bits}-bit {'sym' if sym else 'asym'}, group {group}: not a marlin case "
                 "(marlin takes 4/8-bit symmetric, group -1/32/64/128); vLLM uses its slower gptq kernel"]
    if qc.get("checkpoint_format") == "gptq_v2":
        raise UserError("GPTQModel v2 checkpoints store true zero points; convert to v1 before serving with vLLM")
    return [], notes


CHECKPOINT_FORMAT = CheckpointFormat(
    quant_method="gptq",
    description="GPTQ v1 (AutoGPTQ, GPTQModel, llmquant) and GPTQModel v2",
    summarize=summarize,
    modules=modules,
    shape_problem=shape_problem,
    vllm_verdict=gptq_verdict,
    vllm_args=vllm_args,
    compute_note=packed_compute_note,
    read_layers=read_layers,
    pack=pack_layer,
    checkpoint_config=checkpoint_config,
    writes=FORMAT,
)
