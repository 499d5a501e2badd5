"""The runtime a model runs in: compute dtypes, the device, CPU threads."""

from __future__ import annotations

import os

import torch

from ..errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_bf16() -> bool:
    """AVX512-bf16 / AMX at an AVX512 dispatch: where bf16 matmuls are fast (cpu.bf16_fast)."""
    from ..cpu import cpu_info

    return cpu_info().bf16_fast


def resolve_dtype(choice: str, device: str) -> str:
    """The compute dtype for `auto`: fp16 on CUDA, bf16 on a CPU with bf16 support, else fp32."""
    if choice != "auto":
        return choice
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device: 'cuda' requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return choice


def set_threads() -> None:
    """Use every core this process may run on (torch's default can be lower in containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, n))
