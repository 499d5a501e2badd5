"""Commands that take a checkpoint: `eval` (measure it on our protocol), `inspect` (what it is,
whether vLLM serves it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .app import app, handle_errors


@app.command("eval")
@handle_errors
def eval_cmd(
    path: Path = typer.Argument(..., help="Checkpoint directory (HF, GPTQ, ...) or .gguf file."),
    dataset: str = typer.Option("builtin:pydoc", help="Corpus: a file, builtin:pydoc, or a hub name (wikitext2)."),
    split: Optional[str] = typer.Option("test", help="Split for builtin/hub corpora."),
    field: str = typer.Option("text", help="Field (jsonl) or column (parquet) holding the text."),
    seqlen: Optional[int] = typer.Option(None, help="Window length in tokens (default 2048; 512 for llama-cpp)."),
    max_windows: Optional[int] = typer.Option(None, help="Only the first N windows (quick protocol); "
                                                         "lm-eval-word: the first N documents."),
    protocol: str = typer.Option("gptq-paper", help="gptq-paper | lm-eval-word | llama-cpp (never ranked together)."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (auto: bf16 on CPUs that have it, "
                                           "checked against float32 on 2 windows; fp16 on CUDA)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    latency: bool = typer.Option(True, help="Also measure first-token latency and decode speed."),
    model: Optional[str] = typer.Option(None, help="Model label on the leaderboard (default: the directory name)."),
    board: Optional[Path] = typer.Option(None, help="Leaderboard database to add the row to."),
    isolate: bool = typer.Option(True, help="Evaluate in a fresh process (peak memory is the checkpoint's own)."),
    compile: bool = typer.Option(True, help="Fuse packed weights' dequantization with torch.compile (same results)."),
) -> None:
    """Evaluate any checkpoint on the same protocol as `run`, and add it to the leaderboard.

    Example: `llmquant eval ./my-gptq-model --dataset ../shared/data/wikitext2/wiki.test.raw.txt --seqlen 512 --max-windows 64`
    """
    from ..console import RichProgress, out_console
    from ..eval.standalone import evaluate_path

    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"--dtype: {dtype!r} is not allowed; use auto, float32, bfloat16 or float16")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device: {device!r} is not allowed; use auto, cpu or cuda")
    from ..eval.protocols import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: {protocol!r} is not allowed; use {', '.join(PROTOCOLS)}")
    if seqlen is not None and seqlen < 8:
        raise UserError(f"--seqlen: {seqlen} is too small; use at least 8")
    seqlen = seqlen or PROTOCOLS[protocol].default_seqlen
    with RichProgress() as progress:
        result, info = evaluate_path(path, dataset, split, field, seqlen, max_windows, dtype, device, latency,
                                     model, board, isolate, progress, protocol=protocol, compile_kernels=compile)
    lat = result.latency
    kind = "word perplexity" if result.protocol.name == "lm-eval-word" else "perplexity"
    out_console.print(f"{path}: format {info.format}, {kind} [bold]{result.ppl:.4f}[/] "
                      f"({result.protocol.describe()}), size {result.size_bytes / 1e6:.1f} MB"
                      + (f", TTFT {lat.ttft_ms_median:.1f} ms, decode {lat.decode_tok_s:.1f} tok/s" if lat else ""),
                      highlight=False)


@app.command("inspect")
@handle_errors
def inspect_cmd(
    path: Path = typer.Argument(..., help="Checkpoint directory (GPTQ, AWQ, compressed-tensors, bitsandbytes, HF) or .gguf."),
    format: str = typer.Option("table", "--format", help="table | json"),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size to check the per-GPU shards for."),
    sm: int = typer.Option(80, "--sm", help="Target GPU compute capability x10 (75 T4, 80 A100, 86 RTX 30xx, 89 L4/RTX 40xx, 90 H100)."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when vLLM cannot serve it."),
) -> None:
    """What a quantized checkpoint is (method, bits, group size, quantized modules, size) and
    whether vLLM can serve it (method and kernel it picks, dtype, blockers with reasons).
    Reads metadata and tensor headers only.

    Example: `llmquant inspect ./my-awq-model --tp 2 --sm 86`
    """
    import json as _json

    from ..console import out_console
    from ..inspect import inspect_path

    if format not in ("table", "json"):
        raise UserError(f"--format: {format!r} is not allowed; use table or json")
    if tp < 1:
        raise UserError(f"--tp: {tp} is not allowed; use 1 or more")
    if not 30 <= sm <= 130:
        raise UserError(f"--sm: {sm} is not a compute capability x10; use e.g. 75, 80, 86, 89, 90")
    report = inspect_path(path, tp=tp, sm=sm)
    if format == "json":
        sys.stdout.write(_json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        print_inspect(report, out_console)
    if strict and not report.vllm.servable:
        raise typer.Exit(1)


def print_inspect(r, console) -> None:
    from rich.markup import escape

    v = r.vllm
    bits = "/".join(map(str, r.bits)) or "-"
    groups = "/".join(map(str, r.group_sizes)) or "-"
    console.print(f"[bold]{escape(r.path)}[/]", highlight=False)
    console.print(f"  format {r.format} (quant_method {r.method}), {bits}-bit, group {groups}, "
                  f"sym {r.sym}, desc_act {r.desc_act}, dtype {r.model_dtype}, size {r.size_bytes / 1e6:.1f} MB",
                  highlight=False)
    if r.quantized:
        console.print(f"  quantized ({r.n_quantized} modules):", highlight=False)
        for q in r.quantized:
            console.print(f"    {escape(q['modules'])} x{q['count']}: {q['bits']}-bit, group {q['group_size']}, "
                          f"sym {q['sym']}, [out, in] {q['shape']}", highlight=False)
    if r.dense:
        console.print(f"  left dense: {escape(', '.join(r.dense))}", highlight=False)
    for n in r.notes:
        console.print(f"  note: {escape(n)}", highlight=False)
    verdict = "[green]servable[/]" if v.servable else "[bold red]not servable as is[/]"
    console.print(f"  vLLM (tp {r.tp}, sm {r.sm / 10:.1f}): {verdict} — quantization {v.quantization}, "
                  f"kernel {v.kernel}, activations {v.dtype}", highlight=False)
    for f in v.findings:
        tag = "[bold red]blocker[/]" if f.severity == "blocker" else "[yellow]warning[/]"
        console.print(f"    {tag} {f.code}: {escape(f.reason)}", highlight=False)
