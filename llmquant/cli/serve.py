"""`llmquant serve`: a run's winner (or any checkpoint) behind an OpenAI-compatible API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, handle_errors


@app.command("serve")
@handle_errors
def serve_cmd(
    path: Path = typer.Argument(..., help="Run directory (serves its winner) or checkpoint directory / .gguf file."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | local (default: the recipe's serve.engine, else "
                                                    "auto = vLLM when installed with a CUDA GPU, else built-in)."),
    variant: Optional[str] = typer.Option(None, help="Serve this variant of the run instead of the winner "
                                                     "('baseline' for the unquantized model)."),
    recipe: Optional[Path] = typer.Option(None, help="Take serve settings from this recipe (default: the run's)."),
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1: this machine only)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
    name: Optional[str] = typer.Option(None, help="Model name clients ask for (default: the variant's name)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' "
                                          "(default: $LLMQUANT_API_KEY, else the recipe's serve.api_key_env)."),
    dtype: Optional[str] = typer.Option(None, help="Built-in server: auto | float32 | bfloat16 | float16 (auto: "
                                                   "bf16 on CPUs that have it, fp16 on CUDA)."),
    device: Optional[str] = typer.Option(None, help="Built-in server: auto | cpu | cuda."),
    max_tokens: Optional[int] = typer.Option(None, help="Built-in server: largest max_tokens a request may ask for."),
    queue: Optional[int] = typer.Option(None, help="Built-in server: requests that may wait; more get 429."),
    max_body_bytes: Optional[int] = typer.Option(None, help="Built-in server: larger request bodies get 413."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Built-in server: fuse packed "
                                           "weights' dequantization with torch.compile (default on; same results)."),
    max_model_len: Optional[int] = typer.Option(None, help="vLLM: context length (default: the largest that fits)."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vLLM: fraction of each GPU to use (0.9)."),
    tensor_parallel_size: Optional[int] = typer.Option(None, "--tensor-parallel-size", "--tp", help="vLLM: GPUs "
                                                       "each layer is split across."),
    pipeline_parallel_size: Optional[int] = typer.Option(None, "--pipeline-parallel-size", "--pp",
                                                         help="vLLM: pipeline stages (e.g. one per machine)."),
    distributed_executor_backend: Optional[str] = typer.Option(None, help="vLLM: mp | ray (ray spans machines)."),
    gpu_memory_gib: Optional[float] = typer.Option(None, help="vLLM fit check: memory of each GPU, for GPUs this "
                                                              "machine cannot see (or planning without one)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run (command line, fit check); start nothing."),
    trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code", help="Allow the model's own code."),
) -> None:
    """Serve a run's winner (or any checkpoint) behind an OpenAI-compatible API.

    Examples: `llmquant serve runs/smollm2-demo` · `llmquant serve runs/x --engine vllm --tp 2` ·
    `llmquant serve runs/x --engine vllm --dry-run --gpu-memory-gib 24`
    """
    from ..console import err_console, out_console
    from ..serve.command import serve_path

    overrides = {"engine": engine, "host": host, "port": port, "model_name": name,
                 "local": {"dtype": dtype, "device": device, "max_tokens": max_tokens, "queue": queue,
                           "max_body_bytes": max_body_bytes, "compile": compile},
                 "vllm": {"max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization,
                          "tensor_parallel_size": tensor_parallel_size, "pipeline_parallel_size": pipeline_parallel_size,
                          "distributed_executor_backend": distributed_executor_backend,
                          "gpu_memory_gib": gpu_memory_gib}}

    def say(text: str) -> None:
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    try:
        plan = serve_path(path, overrides, variant, recipe, api_key, dry_run, trust_remote_code, say)
    except KeyboardInterrupt:
        err_console.print("[yellow]stopped[/]")
        return
    for line in plan or []:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)
