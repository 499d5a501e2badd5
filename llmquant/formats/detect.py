"""What a `quantization_config` says, per quant_method: format name, bits, group size, symmetry.

Metadata only; the readers check the tensors. Keys as each tool writes them (GPTQModel /
AutoGPTQ, AutoAWQ / transformers, llm-compressor, transformers' bitsandbytes config).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantSummary:
    format: str
    bits: int | None
    group_size: int | None
    sym: bool | None
    desc_act: bool | None


def gptq(qc: dict) -> QuantSummary:
    v2 = "gptq_v2" in (qc.get("checkpoint_format"), qc.get("format"))
    return QuantSummary("gptq-v2" if v2 else "gptq-v1", qc.get("bits"), qc.get("group_size"),
                        qc.get("sym"), qc.get("desc_act"))


def awq(qc: dict) -> QuantSummary:
    from .awq_gemm import config_bits, config_group_size, config_version

    zp = qc.get("zero_point", True)
    return QuantSummary(f"awq-{config_version(qc)}", config_bits(qc), config_group_size(qc),
                        None if zp is None else not zp, False)


def compressed_tensors(qc: dict) -> QuantSummary:
    from .compressed_tensors import PACKED, formats_used, schemes

    used = formats_used(qc)
    fmt = "ct-" + (PACKED if used == {PACKED} else "+".join(sorted(used)))
    try:
        found = schemes(qc)
    except ValueError:
        found = []
    if not found:
        return QuantSummary(fmt, None, None, None, None)
    s = found[0]
    return QuantSummary(fmt, s.bits, s.group_size, s.symmetric, s.actorder == "group")


def bitsandbytes(qc: dict) -> QuantSummary:
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        return QuantSummary("bnb-int8", 8, None, True, False)
    kind = qc.get("bnb_4bit_quant_type", "fp4")
    return QuantSummary(f"bnb-{kind}", 4, 64, True, False)


SUMMARIES = {
    "gptq": gptq,
    "awq": awq,
    "compressed-tensors": compressed_tensors,
    "bitsandbytes": bitsandbytes,
}


def summarize(method: str, qc: dict) -> QuantSummary:
    fn = SUMMARIES.get(method)
    if fn is None:
        return QuantSummary(method, qc.get("bits"), qc.get("group_size"), qc.get("sym"), qc.get("desc_act"))
    return fn(qc)
