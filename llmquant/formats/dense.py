"""Unquantized Hugging Face checkpoints (no `quantization_config`): the dense entry of the
format table, loaded by transformers and served by vLLM as they are."""

from __future__ import annotations

from pathlib import Path

from .detect import QuantSummary
from .format import CheckpointFormat
from .vllm_compat import VllmVerdict

FORMAT = "hf"


def summarize(qc: dict) -> QuantSummary:
    return QuantSummary(FORMAT, None, None, None, None)


def modules(path: Path, index: dict, qc: dict) -> list:
    return []  # nothing quantized; modules.dense_linears lists the Linears


def shape_problem(in_features: int, out_features: int, bits: int | None, group_size: int | None) -> str | None:
    return None  # any shape


def vllm_verdict(qc: dict, fmt: str, quantized: list, model_dtype: str | None, tp: int, sm: int) -> VllmVerdict:
    return VllmVerdict("none", "dense", "float16, bfloat16 or float32")


def vllm_args(qc: dict) -> tuple[list[str], list[str]]:
    return [], ["dense checkpoint: no quantization"]


def compute_note(info, dtype: str, device: str = "cpu") -> str:
    return f"dense weights and activations in {dtype}"


def load(path: Path, info, dtype, trust_remote_code: bool = False, device: str = "cpu"):
    from ..loading.models import load_hf_model

    return load_hf_model(path, str(dtype).removeprefix("torch."), device, trust_remote_code)


CHECKPOINT_FORMAT = CheckpointFormat(
    quant_method="none",
    description="unquantized Hugging Face checkpoint",
    summarize=summarize,
    modules=modules,
    shape_problem=shape_problem,
    vllm_verdict=vllm_verdict,
    vllm_args=vllm_args,
    compute_note=compute_note,
    load=load,
)
