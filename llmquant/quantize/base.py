"""The Quantizer protocol and the artifact a quantizer leaves on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..progress import NULL_PROGRESS, Progress


@dataclass(frozen=True)
class CalibrationSet:
    """Tokenised calibration crops [n_samples, seqlen] and the hash that identifies them."""

    input_ids: torch.Tensor
    key: str


@dataclass
class QuantizeContext:
    device: str = "cpu"
    progress: Progress = NULL_PROGRESS
    work_dir: Path | None = None  # per-variant scratch space (per-block state for resume)
    tokenizer: Any = None
    model_dir: Path | None = None  # the base model as an HF directory (for methods that load it themselves)
    blocks: Any = None  # a lazy.Blocks: how block weights become present (None: the model is in memory)
    max_shard_bytes: int = 4 << 30  # largest safetensors shard of the written checkpoint
    activation_budget_bytes: int | None = None  # calibration activations kept in memory (None: no bound)
    activation_dtype: torch.dtype | None = None  # dtype they are kept in (None: as computed, exact)
    cache_dir: Path | None = None  # the run's cache, shared by its variants (results reusable across them)
    model_key: str | None = None  # content hash of the base model (part of such results' keys)


@dataclass(frozen=True)
class QuantizedArtifact:
    path: Path
    method: str
    format: str  # "gptq-v1", "awq-gemm", "bnb", "hf"
    config: dict
    size_bytes: int
    content_hash: str
    layer_report: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class QuantizeResult:
    """What a quantizer returns once its checkpoint is written: recorded in the variant's manifest."""

    format: str  # the checkpoint format written (a FORMATS key, or "bnb-<mode>")
    config: dict  # the settings the checkpoint holds (bits, group size, its quantization_config, ...)
    layers: list[dict] = field(default_factory=list)  # per-layer report: [{"module", "bits", "rel_error", ...}]
    details: dict = field(default_factory=dict)  # method-specific facts (block seconds, resumed blocks, a peer's version)

    def to_dict(self) -> dict:
        """The manifest's `summary` (the form runs from before this type recorded)."""
        return {"format": self.format, "config": self.config, "layers": self.layers, **self.details}


class Quantizer(Protocol):
    method: str
    version: str  # bump when the method's output changes: it is part of the cache key

    def quantize(self, model: torch.nn.Module, variant: Any, calib: CalibrationSet | None,
                 out_dir: Path, ctx: QuantizeContext) -> QuantizeResult:
        """Quantize `model` (which it may modify) and write a checkpoint into `out_dir`.

        `model` is None for methods whose table entry says `loads_own_model` (they read
        `ctx.model_dir` themselves, e.g. through transformers' quantization_config).

        Returns what was written (format, config, per-layer report).
        """
        ...
