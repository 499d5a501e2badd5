"""The table of quantization methods.

One explicit entry per method. The implementation is named as "module:attr" and imported
only when a variant of that method runs, so heavy optional backends cost nothing otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..peers import backend_of, is_peer

if TYPE_CHECKING:
    from .base import Quantizer


@dataclass(frozen=True)
class MethodEntry:
    impl: str  # "module:attr" of the Quantizer class (imported when a variant of the method runs)
    config: str  # "module:attr" of its variant config (a pydantic model; imported to validate recipes)
    needs_calibration: bool
    summary: str
    formats: tuple[str, ...] = ()  # checkpoint formats it writes (formats.table.FORMATS keys); the first is
    #                               the default, others are chosen by the variant's `format` field
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
        config="llmquant.quantize.rtn.config:RTNVariant",
        formats=("gptq", "awq"),
        needs_calibration=False,
        summary="round-to-nearest weight-only, no calibration; GPTQ v1 or AWQ GEMM checkpoint",
    ),
    "bnb": MethodEntry(
        "llmquant.quantize.bnb.quantizer:BnbQuantizer",
        config="llmquant.quantize.bnb.config:BnbVariant",
        formats=("bitsandbytes",),
        needs_calibration=False,
        summary="bitsandbytes LLM.int8 / NF4 / FP4 through transformers, saved with save_pretrained",
        loads_own_model=True,
        requires=("bitsandbytes",),
        install="pip install 'llmquant[bnb]'",
    ),
    "gptq": MethodEntry(
        "llmquant.quantize.gptq.quantizer:GPTQQuantizer",
        config="llmquant.quantize.gptq.config:GPTQVariant",
        formats=("gptq",),
        needs_calibration=True,
        summary="GPTQ: calibrated layer-by-layer solve with error feedback, GPTQ v1 checkpoint",
    ),
    "awq": MethodEntry(
        "llmquant.quantize.awq.quantizer:AWQQuantizer",
        config="llmquant.quantize.awq.config:AWQVariant",
        formats=("awq",),
        needs_calibration=True,
        summary="AWQ: activation-aware channel scales and clipping, AWQ GEMM checkpoint",
        check="llmquant.quantize.awq.quantizer:check_model",
        keeps_work=True,
    ),
    "signround": MethodEntry(
        "llmquant.quantize.signround.quantizer:SignRoundQuantizer",
        config="llmquant.quantize.signround.config:SignRoundVariant",
        formats=("gptq",),
        needs_calibration=True,
        summary="SignRound (AutoRound's algorithm): rounding and clipping learned per block by signed gradient "
                "descent on its output error; GPTQ v1 checkpoint",
    ),
    "mixed": MethodEntry(
        "llmquant.quantize.mixed.quantizer:MixedQuantizer",
        config="llmquant.quantize.mixed.config:MixedVariant",
        formats=("gptq",),
        needs_calibration=True,
        summary="GPTQ with bits and group size per layer, allocated from measured sensitivities within a size "
                "or quality budget; GPTQ v1 checkpoint with `dynamic` per-module rules",
        check="llmquant.quantize.mixed.units:check_model",
    ),
}


def _resolve(ref: str):
    module_name, attr = ref.split(":")
    return getattr(importlib.import_module(module_name), attr)


def get_quantizer(method: str) -> "Quantizer":
    return _resolve(METHODS[method].impl)()


def config_class(method: str) -> type:
    """The pydantic model of `method`'s variants."""
    return _resolve(METHODS[method].config)


def variant_configs() -> tuple[type, ...]:
    """Every method's variant config, in table order: the members of the recipe's `variants:` union."""
    return tuple(config_class(m) for m in METHODS)


def checkpoint_format(variant) -> str:
    """The format (a formats.table.FORMATS key) a variant is written in: its `format` field where
    the method offers a choice, else the method's one format."""
    return getattr(variant, "format", None) or METHODS[variant.method].formats[0]


PEER_QUANTIZER = "llmquant.peers.run:PeerQuantizer"
"""The backend for variants whose `backend:` names a peer tool (the peers' own table,
llmquant.peers.BACKENDS, says which methods each serves)."""


def quantizer_for(variant, peers: dict) -> "Quantizer":
    """The quantizer for a variant: ours from METHODS, or the peer its `backend` names
    (`peers`: {backend name: llmquant.peers.interpreter.Peer})."""
    if not is_peer(variant):
        return get_quantizer(variant.method)
    return _resolve(PEER_QUANTIZER)(variant.method, peers[backend_of(variant)])


def loads_own_model(variant) -> bool:
    """True when the pipeline should not load the model for this variant's quantizer."""
    return METHODS[variant.method].loads_own_model or is_peer(variant)
