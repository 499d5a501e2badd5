"""The table of quantization methods.

One explicit entry per method. The implementation is named as "module:attr" and imported
only when a variant of that method runs, so heavy optional backends cost nothing otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Quantizer


@dataclass(frozen=True)
class MethodEntry:
    impl: str
    needs_calibration: bool
    summary: str
    loads_own_model: bool = False
    requires: tuple[str, ...] = ()  # importable packages the method needs (checked before a run)
    install: str | None = None  # how to get them
    check: str | None = None  # "module:function" (variant, model_type, meta model) -> problem or None,
    #                           run by preflight before any weight is loaded
    keeps_work: bool = False  # the work dir holds a reusable result (AWQ's searched scales and clip
    #                           bounds): kept after the checkpoint is written, so a rerun re-applies it


METHODS: dict[str, MethodEntry] = {
    "rtn": MethodEntry(
        "llmquant.quantize.rtn.quantizer:RTNQuantizer",
        needs_calibration=False,
        summary="round-to-nearest weight-only, GPTQ v1 checkpoint",
    ),
    "bnb": MethodEntry(
        "llmquant.quantize.bnb.quantizer:BnbQuantizer",
        needs_calibration=False,
        summary="bitsandbytes LLM.int8 / NF4 / FP4 through transformers, saved with save_pretrained",
        loads_own_model=True,
        requires=("bitsandbytes",),
        install="pip install 'llmquant[bnb]'",
    ),
    "gptq": MethodEntry(
        "llmquant.quantize.gptq.quantizer:GPTQQuantizer",
        needs_calibration=True,
        summary="GPTQ: calibrated layer-by-layer solve with error feedback, GPTQ v1 checkpoint",
    ),
    "awq": MethodEntry(
        "llmquant.quantize.awq.quantizer:AWQQuantizer",
        needs_calibration=True,
        summary="AWQ: activation-aware channel scales and clipping, AWQ GEMM checkpoint",
        check="llmquant.quantize.awq.quantizer:check_model",
        keeps_work=True,
    ),
}


def get_quantizer(method: str) -> "Quantizer":
    entry = METHODS[method]
    module_name, attr = entry.impl.split(":")
    return getattr(importlib.import_module(module_name), attr)()
