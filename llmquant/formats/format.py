"""What a checkpoint format is, in one object: how it is written, read, summarised, checked and
served. One `CheckpointFormat` per format, defined in that format's own module (gptq_v1.py,
awq_gemm.py, compressed_tensors.py, bnb.py, dense.py) and listed in `table.FORMATS`.

Adding a format: write its module (the functions below, then `CHECKPOINT_FORMAT =
CheckpointFormat(...)` at its end) and add one line to `table.FORMATS`. Everything that asks
"what is this format?" (the loader, `inspect`, the vLLM pre-flight and serve flags, preflight's
shape check, the generic writer) reads it from the table.

This module imports no torch: the signatures below are documentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

# Signatures of the parts (`info` is a load.CheckpointInfo, `index` modules.tensor_index's result):
#   summarize(qc) -> detect.QuantSummary                      what quantization_config says
#   modules(path, index, qc) -> list[modules.ModuleQuant]     quantized layers, from tensor headers
#   shape_problem(in_features, out_features, bits, group_size) -> str | None
#                                                             why a Linear cannot be stored (preflight)
#   vllm_verdict(qc, fmt, quantized, model_dtype, tp, sm) -> vllm_compat.VllmVerdict
#   vllm_args(qc) -> (vllm serve flags, notes)                for a checkpoint already in this format
#   compute_note(info, dtype, device) -> str                  what an evaluation on a CPU computes
#   read_layers(path, info, state) -> iterator of (module name, IntWeight)
#   load(path, info, torch dtype, trust_remote_code, device) -> nn.Module   (a whole loader of its own)
#   pack(IntWeight) -> dict[leaf, Tensor]                     one Linear's tensors, without its bias
#   checkpoint_config(settings, layers, prefix, block_linears, extra_config) -> (quantization_config,
#       {file name: JSON object} written beside config.json)
#       settings: bits, group_size, sym, overrides (a recipe variant); layers: name -> IntWeight (model
#       order); prefix: the decoder blocks' path; block_linears: every Linear of the decoder blocks
#   extra_resident_bytes(model) -> int                        memory kept outside parameters and buffers


class LayerGroups(NamedTuple):
    """What `checkpoint_config` needs of a layer a streaming quantizer has already written."""

    in_features: int
    n_groups: int


@dataclass(frozen=True)
class CheckpointFormat:
    quant_method: str  # quantization_config.quant_method ("none": a dense checkpoint); the FORMATS key
    description: str
    summarize: Callable[[dict], Any]
    modules: Callable[..., list]
    shape_problem: Callable[[int, int, int, int], str | None]
    vllm_verdict: Callable[..., Any]
    vllm_args: Callable[[dict], tuple[list[str], list[str]]]
    compute_note: Callable[[Any, str, str], str]
    read_layers: Callable[..., Any] | None = None  # packed integer formats: read by the shared loader
    load: Callable[..., Any] | None = None  # formats with a loader of their own
    pack: Callable[[Any], dict] | None = None  # None: llmquant does not write this format
    checkpoint_config: Callable[..., tuple[dict, dict]] | None = None
    writes: str | None = None  # the format name a written checkpoint reports ("gptq-v1", "awq-gemm")
    vllm_dtype: str | None = None  # the --dtype vLLM needs by default (None: its own choice)
    extra_resident_bytes: Callable[[Any], int] | None = None

    @property
    def writable(self) -> bool:
        return self.pack is not None and self.checkpoint_config is not None

    @property
    def loadable(self) -> bool:
        return self.read_layers is not None or self.load is not None


def packed_compute_note(info: Any, dtype: str, device: str = "cpu") -> str:
    """compute_note of the integer weight-only formats the shared loader reads (QuantLinear)."""
    return f"{info.format}: integer weights kept in memory, dequantized to {dtype} for each matmul; activations {dtype}"
