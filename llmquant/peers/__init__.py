"""Peers on our protocol: other tools quantize, we calibrate and evaluate.

A variant with `backend: gptqmodel`, `backend: llmcompressor` (gptq, awq) or `backend: autoround`
(signround) is quantized by that tool,
running in its own virtual environment (peers pin other versions of torch/transformers than
ours), from OUR calibration crops; its checkpoint is then evaluated by our loader and
protocol like any other variant. The worker scripts beside this file run in the peer's
interpreter and import nothing from llmquant.

This module is the table: which backends exist, which methods each serves, which of our
settings each one cannot honour, and how to install it. It imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OURS = "llmquant"
"""The backend name of our own quantizers (the default)."""


@dataclass(frozen=True)
class PeerBackend:
    name: str  # the recipe's `backend:` value
    package: str  # the distribution whose version is recorded (importlib.metadata name)
    worker: str  # script in this folder, run as `<peer python> <worker> JOB.json`
    env_var: str  # environment variable naming the peer's interpreter
    tested: str  # versions known to work (README, notes)
    versions: tuple[str, ...]  # the peer's versions known to work (another one runs, with a note)
    install: str  # how to make its venv
    formats: dict[str, str]  # method -> the checkpoint format it writes (our reader's name)
    ignores: dict[str, dict[str, str]] = field(default_factory=dict)  # method -> {our setting: why}
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the worker ("{threads}" filled in)

    @property
    def worker_path(self) -> Path:
        return Path(__file__).resolve().parent / self.worker

    def ignored(self, method: str, variant) -> dict[str, str]:
        """Our settings this peer cannot honour for `variant` ({setting: why}). A key "name=value"
        applies when the variant's setting has that value; a bare "name" when the recipe sets it."""
        out = {}
        for name, why in self.ignores.get(method, {}).items():
            setting, _, value = name.partition("=")
            if value and str(getattr(variant, setting, None)).lower() != value:
                continue
            if not value and setting not in getattr(variant, "model_fields_set", ()):
                continue  # a speed-only setting left at its default
            out[setting] = why
        return out


def _venv_install(name: str, pip: str) -> str:
    return (f"python3 -m venv peers/{name} && peers/{name}/bin/pip install torch==2.13.0 && "
            f"peers/{name}/bin/pip install {pip}")


AWQ_SEARCH_OPTIONS = ("n_grid", "duo_scaling", "clip", "clip_n_grid", "clip_max_shrink", "search_samples",
                      "coarse_grid", "propagate")
"""Our AWQ search settings no peer takes (each runs its own defaults)."""

GPTQ_ARITHMETIC = {
    "grid=mse": "the peer spans each group's min..max (its default); our MSE grid search is not passed",
    "grid=fullrange": "the peer's symmetric grid is GPTQ's (2*absmax/(2**bits-1) steps), not full range",
    "grid=fullrange_mse": "the peer's symmetric grid is GPTQ's min..max; our full-range MSE grid is not passed",
    "precision=auto": "the peer accumulates its Hessians and solves in float32",
    "precision=float64": "the peer accumulates its Hessians and solves in float32",
}
"""Our GPTQ grid and arithmetic, which neither GPTQ peer takes."""

BACKENDS: dict[str, PeerBackend] = {
    "gptqmodel": PeerBackend(
        name="gptqmodel", package="gptqmodel", worker="gptqmodel_worker.py",
        env_var="LLMQUANT_GPTQMODEL_PYTHON",
        tested="gptqmodel 7.6.0 (torch 2.13.0+cpu, transformers 5.24)", versions=("7.6.0",),
        install=_venv_install("gptqmodel", "gptqmodel==7.6.0"),
        formats={"gptq": "gptq-v1", "awq": "awq-gemm"},
        ignores={
            "gptq": {"block_size": "gptqmodel uses its own lazy-update block (speed only)", **GPTQ_ARITHMETIC},
            "awq": {**{k: "gptqmodel runs AutoAWQ's search with its defaults (n_grid 20, duo scaling, clipping)"
                        for k in AWQ_SEARCH_OPTIONS},
                    "calib_dtype": "gptqmodel's CPU AWQ packing kernel takes bf16/fp16 only: it calibrates in bf16",
                    "max_chunk_memory_mb": "gptqmodel bounds its own working memory (speed only)"},
        },
        env={"GPTQMODEL_CPU_WORKERS": "{threads}"},
    ),
    "llmcompressor": PeerBackend(
        name="llmcompressor", package="llmcompressor", worker="llmcompressor_worker.py",
        env_var="LLMQUANT_LLMCOMPRESSOR_PYTHON",
        tested="llmcompressor 0.14.0.1 (compressed-tensors 0.19.0, transformers 5.17.0, torch 2.13.0+cpu)",
        versions=("0.14.0.1", "0.14.0"),
        install=_venv_install("llmcompressor", "llmcompressor==0.14.0.1"),
        formats={"gptq": "ct-pack-quantized", "awq": "ct-pack-quantized"},
        ignores={
            "gptq": {
                "static_groups=false": "llm-compressor fixes every group's grid from the weights before the "
                                       "solve (as static_groups: true)",
                "act_group_aware=true": "llm-compressor has no group-aware reordering; its actorder 'static' "
                                        "(solve columns by Hessian diagonal, groups fixed) is used instead",
                "desc_act=true": "llm-compressor 0.14 has only actorder 'static' (groups fixed, no g_idx) "
                                 "for GPTQ, which is used instead",
                "true_sequential=true": "llm-compressor calibrates all Linears of a block on the block's "
                                        "inputs before any of them is quantized",
                **GPTQ_ARITHMETIC,
            },
            "awq": {**{k: "llm-compressor runs its AWQModifier with its defaults (n_grid 20, duo scaling)"
                       for k in (*AWQ_SEARCH_OPTIONS, "calib_dtype")},
                    "max_chunk_memory_mb": "llm-compressor bounds its own working memory (speed only)"},
        },
    ),
    "autoround": PeerBackend(
        name="autoround", package="auto_round", worker="autoround_worker.py",
        env_var="LLMQUANT_AUTOROUND_PYTHON",
        tested="auto-round 0.16.1 (torch 2.13.0+cpu, transformers 5.25.0)", versions=("0.16.1",),
        install=_venv_install("autoround", "auto-round==0.16.1"),
        formats={"signround": "gptq-v1"},
        ignores={"signround": {
            "target=block": "auto-round fits each block to the float model's outputs (our target: model)",
            "grid=minmax": "auto-round's symmetric grid is full range (its int_sym; our grid: fullrange)"}},
    ),
}

METHOD_BACKENDS: dict[str, tuple[str, ...]] = {
    "gptq": (OURS, "gptqmodel", "llmcompressor"),
    "awq": (OURS, "gptqmodel", "llmcompressor"),
    "signround": (OURS, "autoround"),
}
"""Which backends may quantize each method (each method's variant class declares a `backend`
field from this table)."""

PEER_NAMES = tuple(BACKENDS)


def backend_of(variant) -> str:
    return getattr(variant, "backend", OURS) or OURS


def is_peer(variant) -> bool:
    return backend_of(variant) != OURS


def label(method: str | None, backend: str | None) -> str:
    """How a leaderboard shows a method: 'gptq', or 'gptq (gptqmodel 7.6.0)' for a peer's output."""
    m = method or "?"
    return f"{m} ({backend})" if backend else m
