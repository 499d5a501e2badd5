"""What a `quantization_config` says: format name, bits, group size, symmetry.

Metadata only; the readers check the tensors. Each format's `summarize` (table.FORMATS) reads
the keys as its tools write them (GPTQModel / AutoGPTQ, AutoAWQ / transformers, llm-compressor,
transformers' bitsandbytes config).
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
