"""What every method's variant config shares; each method's own config (its `config.py`) subclasses
one of these, and the recipe's `variants:` union is built from the METHODS table's configs.

Imports nothing heavy: a recipe validates without torch.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from ..peers import OURS
from ..schema import Strict, check_group_size, check_name

GPTQ_BITS = (2, 3, 4, 8)
"""Bit widths the GPTQ v1 checkpoint format (and so vLLM/transformers) can store."""


class ModuleOverride(Strict):
    """Per-module settings, matched with re.search against module names such as
    `model.layers.3.mlp.down_proj`. The first matching override wins."""

    pattern: str
    skip: bool = False
    bits: Literal[2, 3, 4, 8] | None = None
    group_size: int | None = None
    sym: bool | None = None

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"is not a valid regular expression ({e})") from None
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int | None) -> int | None:
        return None if v is None else check_group_size(v)


class VariantBase(Strict):
    """Every variant: a name, the dtype of what stays unquantized. A field added later lists its default
    in `_omitted_defaults`: left out of the dump at that value, so older variants keep their cache keys."""

    _omitted_defaults: ClassVar[dict[str, Any]] = {}
    name: str
    save_dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="dtype of the tensors left unquantized; auto = float16 unless the model is bfloat16"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        if isinstance(data, dict):
            for key, default in self._omitted_defaults.items():
                if key in data and data[key] == default:
                    data.pop(key)
        return data


class WeightOnlyVariant(VariantBase):
    """Options shared by weight-only integer methods stored in packed integer formats."""

    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = 128
    sym: bool = True
    quantize_lm_head: bool = False
    overrides: list[ModuleOverride] = []

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        return check_group_size(v)


class PeerBackedVariant(WeightOnlyVariant):
    """A weight-only method a peer tool may quantize instead of us (llmquant/peers): a subclass
    declares `backend: Literal[METHOD_BACKENDS["<method>"]] = backend_field()`."""

    @model_validator(mode="after")
    def _peer_limits(self):
        backend = getattr(self, "backend", OURS)
        if backend != OURS:
            if self.overrides:
                raise ValueError(f"overrides are not passed to backend {backend}; use backend: {OURS}")
            if self.quantize_lm_head:
                raise ValueError(f"quantize_lm_head is not passed to backend {backend}; use backend: {OURS}")
        return self

    _omitted_defaults: ClassVar[dict[str, Any]] = {"backend": OURS}


def backend_field():
    return Field(OURS, description="who quantizes: llmquant (ours), or a peer tool in its own venv (gptqmodel, "
                                   "llmcompressor, autoround) whose checkpoint our loader and protocol evaluate; "
                                   "see `peers:`")
