"""Serving with vLLM: the `vllm serve` argument list built from the artifact, the fit check, launch.

Flags (names and meanings as in vLLM's `EngineArgs` and its OpenAI frontend):
- no `--quantization` for pre-quantized GPTQ / AWQ / compressed-tensors / fp8 checkpoints: vLLM
  reads `quantization_config` and picks its fastest kernel itself (gptq_marlin for 4/8-bit
  symmetric GPTQ with group size -1/32/64/128, awq_marlin for 4-bit AWQ); naming the plain method
  would force the slower kernel.
- `--quantization bitsandbytes` for bitsandbytes: needed to quantize a dense checkpoint while
  loading; harmless (it matches the config) for pre-quantized ones, which older vLLMs required.
- `--dtype half` for AWQ: the plain AWQ kernel takes fp16 activations only.
- `--max-model-len` from the fit check, `--gpu-memory-utilization`, `--tensor-parallel-size`,
  `--pipeline-parallel-size`, `--distributed-executor-backend ray` to span machines,
  `--served-model-name`, `--host`, `--port`. The API key goes in `VLLM_API_KEY` (the environment,
  not the argument list, which other users can read).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..formats.table import FORMATS
from ..recipe import ServeSpec, VllmServeSpec
from .artifact import ServeTarget, model_shape, tensor_table, weight_bytes
from .fit import GiB, FitPlan, FitRequest, GpuMemory, plan_fit
from .process import ManagedServer

log = logging.getLogger("llmquant")

FOREIGN_PRE_QUANTIZED = ("fp8", "gptq_marlin", "awq_marlin", "marlin")  # read by vLLM, not in formats.table
DTYPE_BYTES = {"half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}


@dataclass(frozen=True)
class VllmLaunch:
    argv: list[str]
    env: dict[str, str]
    plan: FitPlan | None
    notes: list[str] = field(default_factory=list)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_command() -> list[str]:
    """The `vllm` entry point of this environment (beside our Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "vllm"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("vllm")
    if found:
        return [found]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def quantization_args(quant_config: dict, spec: VllmServeSpec) -> tuple[list[str], list[str]]:
    """(flags, notes) for the checkpoint's quantization_config and the recipe's request."""
    method = (quant_config.get("quant_method") or "none").lower()
    if spec.quantization and method not in ("none", spec.quantization):
        raise UserError(f"serve.vllm.quantization: {spec.quantization!r} cannot apply to a checkpoint already "
                        f"quantized with {method!r}; leave it unset")
    if method == "none" and spec.quantization == "bitsandbytes":
        return ["--quantization", "bitsandbytes"], ["bitsandbytes: quantized while loading (in flight)"]
    if method in FORMATS:
        return FORMATS[method].vllm_args(quant_config)
    notes = []
    if method not in FOREIGN_PRE_QUANTIZED:
        notes.append(f"quant_method {method!r}: passed to vLLM as it is (it reads quantization_config itself)")
    return [], notes


def served_dtype(quant_config: dict, spec: VllmServeSpec) -> str | None:
    """The --dtype to pass (None: vLLM's auto)."""
    if spec.dtype != "auto":
        return spec.dtype
    method = (quant_config.get("quant_method") or "none").lower()
    return FORMATS[method].vllm_dtype if method in FORMATS else None


def float_bytes(dtype: str | None) -> int:
    """Bytes of a float weight on the GPU. vLLM's `auto` serves fp32 and fp16 checkpoints in fp16
    and bf16 ones in bf16: 2 bytes either way."""
    return DTYPE_BYTES[dtype] if dtype else 2


def build_argv(target: ServeTarget, serve: ServeSpec, max_model_len: int | None, model_name: str,
               port: int, trust_remote_code: bool = False, command: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The full `vllm serve` command line (and notes on what vLLM will do with it)."""
    spec = serve.vllm
    if target.info.format == "gguf":
        raise UserError(f"{target.checkpoint}: serve GGUF files with --engine local; vLLM's GGUF support is experimental")
    qargs, notes = quantization_args(target.info.quant_config, spec)
    argv = [*(command or vllm_command()), "serve", str(target.checkpoint),
            "--served-model-name", model_name, "--host", serve.host, "--port", str(port),
            "--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}",
            "--tensor-parallel-size", str(spec.tensor_parallel_size),
            "--pipeline-parallel-size", str(spec.pipeline_parallel_size), *qargs]
    dtype = served_dtype(target.info.quant_config, spec)
    if dtype:
        argv += ["--dtype", dtype]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if spec.distributed_executor_backend:
        argv += ["--distributed-executor-backend", spec.distributed_executor_backend]
        if spec.distributed_executor_backend == "ray":
            notes.append("Ray: start the cluster first (`ray start --head` here, `ray start --address=HEAD:6379` on "
                          "the others); vLLM places tensor x pipeline ranks on its GPUs")
    if spec.max_num_seqs:
        argv += ["--max-num-seqs", str(spec.max_num_seqs)]
    if spec.max_num_batched_tokens:
        argv += ["--max-num-batched-tokens", str(spec.max_num_batched_tokens)]
    if spec.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", spec.kv_cache_dtype]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    if trust_remote_code:
        argv.append("--trust-remote-code")
    argv += list(spec.extra_args)
    return argv, notes


def _nvml_gpus() -> list[GpuMemory] | None:
    """Memory of the visible GPUs from NVML (a vLLM dependency), without creating a CUDA context in
    this process (one would hold ~0.5 GiB of the GPU while vLLM runs beside it)."""
    try:
        import pynvml
    except ImportError:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        pynvml.nvmlInit()
        try:
            ids = list(range(pynvml.nvmlDeviceGetCount()))
            if visible is not None:
                ids = [int(x) for x in visible.split(",") if x.strip()]
            out = []
            for i in ids:
                mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
                out.append(GpuMemory(total=int(mem.total), free=int(mem.free)))
            return out
        finally:
            pynvml.nvmlShutdown()
    except (ValueError, pynvml.NVMLError):  # UUIDs in CUDA_VISIBLE_DEVICES, no driver, ...
        return None


def visible_gpus() -> list[GpuMemory]:
    gpus = _nvml_gpus()
    if gpus is not None:
        return gpus
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append(GpuMemory(total=total, free=free))
    return out


def gpus_for(spec: VllmServeSpec, visible: list[GpuMemory]) -> list[GpuMemory]:
    """The GPUs the fit check plans for: `gpu_memory_gib` each when given (all free), else the
    visible ones; for Ray across machines, the remote GPUs are assumed equal to the first one here."""
    n = spec.tensor_parallel_size * spec.pipeline_parallel_size
    if spec.gpu_memory_gib:
        size = int(spec.gpu_memory_gib * GiB)
        return [GpuMemory(size, size)] * n
    if spec.distributed_executor_backend == "ray" and visible and len(visible) < n:
        return visible + [visible[0]] * (n - len(visible))
    return visible


def fit_request(spec: VllmServeSpec, kv_bytes_default: int) -> FitRequest:
    return FitRequest(
        util=spec.gpu_memory_utilization, tp=spec.tensor_parallel_size, pp=spec.pipeline_parallel_size,
        max_model_len=spec.max_model_len, kv_bytes=1 if spec.kv_cache_dtype.startswith("fp8") else kv_bytes_default,
        act_bytes=kv_bytes_default, max_num_seqs=spec.max_num_seqs or 256,
        max_num_batched_tokens=spec.max_num_batched_tokens or 8192,
        overhead_bytes=int(spec.overhead_gib * GiB) if spec.overhead_gib is not None else None,
    )


def check_fit(target: ServeTarget, spec: VllmServeSpec, gpus: list[GpuMemory]) -> FitPlan:
    shape = model_shape(target.checkpoint)
    fb = float_bytes(served_dtype(target.info.quant_config, spec))
    inflight = spec.quantization == "bitsandbytes" and target.info.method == "none"
    weights = weight_bytes(tensor_table(target.checkpoint), shape.layers, fb, inflight_4bit=inflight)
    if not gpus:
        raise UserError("serve.vllm: no CUDA GPU is visible for the fit check; set serve.vllm.gpu_memory_gib "
                        "(per GPU) to plan anyway, or serve.vllm.fit_check: false")
    return plan_fit(shape, weights, gpus, fit_request(spec, fb))


def prepare(target: ServeTarget, serve: ServeSpec, model_name: str, port: int, api_key: str | None,
            trust_remote_code: bool = False, gpus: list[GpuMemory] | None = None) -> VllmLaunch:
    """Fit check, then the command line. `gpus` defaults to what this machine sees."""
    spec = serve.vllm
    plan = None
    max_len = spec.max_model_len
    if spec.fit_check:
        plan = check_fit(target, spec, gpus_for(spec, visible_gpus() if gpus is None else gpus))
        max_len = plan.max_model_len
    argv, notes = build_argv(target, serve, max_len, model_name, port, trust_remote_code)
    if plan:
        notes.append("fit: " + plan.describe())
    env = {"VLLM_API_KEY": api_key} if api_key else {}
    return VllmLaunch(argv, env, plan, notes)


_SUGGESTED = re.compile(r"estimated maximum model length is ([\d,]+)")


def suggested_max_model_len(log_text: str) -> int | None:
    """The context vLLM says would fit, from its refusal to start ("... the estimated maximum model
    length is 32768. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` ...")."""
    m = _SUGGESTED.search(log_text)
    return int(m.group(1).replace(",", "")) // 16 * 16 if m else None


class VllmServer(ManagedServer):
    """`vllm serve` in a child process. When the fit check chose max_model_len and vLLM's own
    profile finds less room (our activation margin is an estimate), it retries once with the
    length vLLM says fits."""

    def __init__(self, *a, relaunch: Callable[[int], list[str]] | None = None, **kw):
        super().__init__(*a, **kw)
        self.relaunch = relaunch

    def wait_ready(self, poll_s: float = 0.5) -> None:
        try:
            super().wait_ready(poll_s)
        except UserError:
            n = suggested_max_model_len("\n".join(self._tail))
            if self.relaunch is None or not n:
                raise
            log.warning("vllm: max_model_len did not fit after vLLM's profiling; retrying with %d", n)
            self.argv, self.relaunch = self.relaunch(n), None
            self.start()
            super().wait_ready(poll_s)


def launch(target: ServeTarget, serve: ServeSpec, model_name: str, port: int, api_key: str | None,
           log_path: Path, trust_remote_code: bool = False) -> VllmServer:
    if not vllm_installed():
        raise UserError("engine vllm: vLLM is not installed here: pip install 'llmquant[vllm]' (needs a CUDA GPU); "
                        "or use --engine local")
    plan = prepare(target, serve, model_name, port, api_key, trust_remote_code)
    for note in plan.notes:
        log.info("vllm: %s", note)

    def relaunch(n: int) -> list[str]:
        return build_argv(target, serve, n, model_name, port, trust_remote_code)[0]

    return VllmServer(plan.argv, log_path, serve.host, port, model_name, api_key=api_key, env=plan.env,
                      startup_timeout=serve.vllm.startup_timeout_s, what="vllm serve",
                      relaunch=relaunch if plan.plan and plan.plan.chosen else None)
