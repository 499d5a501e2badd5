"""The `llmquant` command line. Each command parses, calls one library function, prints."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help=(
        "Quantize a Hugging Face LLM with several methods, measure every variant against the "
        "baseline on one protocol, rank them and pick the winner.\n\n"
        "Examples:\n\n"
        "    llmquant run recipes/smollm2-demo.yaml\n\n"
        "    llmquant validate recipes/*.yaml\n\n"
        "    llmquant eval runs/smollm2-demo/variants/rtn-w4-g64/checkpoint --dataset builtin:pydoc --split test\n\n"
        "    llmquant board --format md\n\n"
        "    llmquant serve runs/smollm2-demo"
    ),
)
STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from .cpu import environment_lines

        typer.echo(environment_lines()[0])
        typer.echo(environment_lines()[1])
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version, torch's and the CPU capability detected; exit.")) -> None:
    from .console import setup_logging

    STATE["debug"] = debug
    setup_logging(debug)


@app.command("env")
def env_command() -> None:
    """What this machine offers llmquant: versions, CPU model, torch's dispatch capability (and
    whether ATEN_CPU_CAPABILITY emulates a lesser CPU), bf16, int4 layout, GPU, threads."""
    from .cpu import environment_lines

    for line in environment_lines(full=True):
        typer.echo(line)


def handle_errors(fn: Callable) -> Callable:
    """User errors: one red line, exit 2. Bugs: one line and exit 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .console import err_console

        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if STATE["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished steps are kept; rerun the same command to resume")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            if STATE["debug"]:
                raise
            err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@handle_errors
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore finished steps in the run directory and redo everything."),
    board: Optional[Path] = typer.Option(None, help="Leaderboard database (default: the recipe's output.board, "
                                                    "else $LLMQUANT_BOARD, else the user data dir)."),
) -> None:
    """Run a recipe: baseline, every variant, leaderboard, winner.

    Example: `llmquant run recipes/smollm2-demo.yaml`
    """
    from .console import RichProgress, err_console
    from .pipeline import run as run_recipe
    from .recipe import load_recipe

    r = load_recipe(recipe)
    if getattr(r, "kind", None) == "classic":
        from .classic.pipeline import run_classic

        with RichProgress() as progress:
            summary = run_classic(r, progress=progress, fresh=fresh, board_path=board)
        print_classic_summary(summary)
        err_console.print(f"run directory: {summary.run_dir}  ·  leaderboard: {summary.board_path}")
        return
    with RichProgress() as progress:
        summary = run_recipe(r, progress=progress, fresh=fresh, board_path=board)
    print_summary(summary)
    err_console.print(f"run directory: {summary.run_dir}  ·  leaderboard: {summary.board_path}")
    if r.serve.after_run != "none":
        from .serve.command import after_run

        try:
            after_run(r, summary.run_dir, lambda t: err_console.print(t, highlight=False, markup=False, soft_wrap=True))
        except KeyboardInterrupt:
            err_console.print("[yellow]stopped[/]")


def print_summary(summary) -> None:
    from .board import Row, group_by_protocol, table_cells
    from .console import out_console, rich_table

    rows = [Row({"variant": "baseline", "method": "none", "bits": None, "group_size": None, "is_baseline": 1,
                 "size_bytes": summary.baseline.size_bytes, "ppl": summary.baseline.ppl, "delta_ppl_pct": 0.0,
                 **_lat(summary.baseline), "peak_rss_bytes": summary.baseline.peak_rss_bytes,
                 "model": summary.model, "protocol_key": summary.baseline.protocol.key})]
    for o in summary.variants:
        rows.append(Row({"variant": o.name, "method": o.method, "backend": o.summary.get("backend"),
                         "bits": o.summary.get("config", {}).get("bits"),
                         "group_size": o.summary.get("config", {}).get("group_size"), "is_baseline": 0,
                         "size_bytes": o.result.size_bytes, "ppl": o.result.ppl,
                         "delta_ppl_pct": (o.result.ppl / summary.baseline.ppl - 1) * 100,
                         **_lat(o.result), "peak_rss_bytes": o.result.peak_rss_bytes, **o.step,
                         "model": summary.model, "protocol_key": o.result.protocol.key}))
    for (model, _), group in group_by_protocol(rows).items():
        headers, cells = table_cells(group)
        title = f"{model} — {summary.baseline.protocol.describe()}"
        out_console.print(rich_table(title, headers, cells, highlight=summary.decision.winner))
    verdict = summary.decision.winner or "none"
    out_console.print(f"[bold]winner:[/] [green]{verdict}[/] — {summary.decision.reason}", highlight=False)
    for w in summary.decision.warnings:
        out_console.print(f"[bold yellow]warning:[/] {w}", highlight=False, markup=True)


def print_classic_summary(summary) -> None:
    from .board import Row, group_by_protocol, table_cells
    from .console import out_console, rich_table

    for (model, _), group in group_by_protocol([Row(r) for r in summary.rows]).items():
        headers, cells = table_cells(group)
        out_console.print(rich_table(f"{model} — {group[0]['protocol']}", headers, cells,
                                     highlight=summary.decision.winner))
    verdict = summary.decision.winner or "none"
    out_console.print(f"[bold]winner:[/] [green]{verdict}[/] — {summary.decision.reason}", highlight=False)


def _lat(result) -> dict:
    lat = result.latency
    return {"ttft_ms_median": lat.ttft_ms_median if lat else None, "ttft_ms_p90": lat.ttft_ms_p90 if lat else None,
            "decode_tok_s": lat.decode_tok_s if lat else None}


@app.command()
@handle_errors
def validate(recipes: list[Path] = typer.Argument(..., help="Recipe YAML file(s).")) -> None:
    """Check recipes without loading model weights: schema, files, layer shapes vs bits/group size.

    Example: `llmquant validate recipes/*.yaml`
    """
    from .console import out_console
    from .preflight import preflight
    from .recipe import load_recipe

    for path in recipes:
        r = load_recipe(path)
        if getattr(r, "kind", None) == "classic":
            from .classic.preflight import preflight_classic

            rep = preflight_classic(r)
            methods = ", ".join(f"{v.name} ({v.method})" for v in r.variants) or "no variants"
            out_console.print(f"[green]ok[/] {path}: classic model {rep.model}; data {rep.data}; {methods}",
                              highlight=False)
            for note in rep.notes:
                out_console.print(f"   note: {note}", highlight=False)
            continue
        report = preflight(r)
        methods = ", ".join(f"{v.name} ({v.method})" for v in r.variants) or "no variants"
        out_console.print(f"[green]ok[/] {path}: model {report.source.label} ({report.source.kind}); {methods}",
                          highlight=False)
        for note in report.notes:
            out_console.print(f"   note: {note}", highlight=False)
        for problem in (report.plan.problems if report.plan else []):
            out_console.print(f"   note: will not fit this machine (llmquant plan {path}): {problem}", highlight=False)


@app.command()
@handle_errors
def plan(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
         format: str = typer.Option("table", "--format", help="table | json"),
         source: Optional[str] = typer.Option(None, "--source", help="plan for this model instead of the recipe's "
                                              "model.source (e.g. a directory holding only config.json)"),
         device: Optional[str] = typer.Option(None, "--device", help="plan for this model.device (cpu | cuda)"),
         ram_gib: Optional[float] = typer.Option(None, "--ram-gib", help="plan for a machine with this much RAM"),
         gpu_gib: Optional[list[float]] = typer.Option(None, "--gpu-gib", help="plan for GPUs of this size "
                                                       "(repeat for several)")) -> None:
    """Will the recipe fit this machine? Estimated peak host memory, GPU memory and disk of each
    step (load, quantize and evaluate each variant, serve), from the model's config.json and
    tensor headers only: no weights are read, so a directory with just the config plans a model
    before it is downloaded. Exits 2 when a step cannot fit (the same check starts `run`).

    Example: `llmquant plan recipes/llama7b-awq.yaml`
    """
    import json

    from .console import err_console, out_console
    from .plan import plan_for, render_json, render_text
    from .recipe import load_recipe

    if format not in ("table", "json"):
        raise UserError(f"--format: {format!r} is not allowed; use table or json")
    r = load_recipe(recipe)
    if getattr(r, "kind", None) == "classic":
        raise UserError(f"{recipe}: plan covers LLM recipes; classic (CNN/BERT) models fit any machine that runs them")
    if device not in (None, "cpu", "cuda"):
        raise UserError(f"--device: {device!r} is not allowed; use cpu or cuda")
    changes = {k: v for k, v in (("source", source), ("device", device)) if v}
    if changes:
        r = r.model_copy(update={"model": r.model.model_copy(update=changes)})
        r._path = recipe
    try:
        p = plan_for(r, machine_for(r, ram_gib, gpu_gib))
    except UserError as e:
        raise UserError(str(e) if str(e).startswith(str(recipe)) else f"{recipe}: {e}") from None
    if format == "json":
        typer.echo(json.dumps(render_json(p), indent=2))
    else:
        for line in render_text(p):
            out_console.print(line, highlight=False, markup=False, soft_wrap=True)
    if p.problems:
        err_console.print(f"[bold red]error:[/] {recipe}: will not fit this machine: {p.problems[0]}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def machine_for(recipe, ram_gib: float | None, gpu_gib: list[float] | None):
    """This machine, or a described one (`--ram-gib`, `--gpu-gib`): None when neither is given."""
    if ram_gib is None and not gpu_gib:
        return None
    from dataclasses import replace

    from .plan import this_machine
    from .serve.fit import GpuMemory

    m = this_machine(recipe.run_dir(), False)
    if ram_gib is not None:
        if ram_gib <= 0:
            raise UserError(f"--ram-gib: {ram_gib:g} must be positive")
        m = replace(m, ram_total=int(ram_gib * (1 << 30)), ram_available=int(ram_gib * (1 << 30)), cpu="(described)")
    if gpu_gib:
        if any(g <= 0 for g in gpu_gib):
            raise UserError("--gpu-gib: sizes must be positive")
        m = replace(m, gpus=tuple(GpuMemory(int(g * (1 << 30)), int(g * (1 << 30))) for g in gpu_gib))
    return m


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
    from .console import RichProgress, out_console
    from .eval.standalone import evaluate_path

    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"--dtype: {dtype!r} is not allowed; use auto, float32, bfloat16 or float16")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device: {device!r} is not allowed; use auto, cpu or cuda")
    from .eval.protocols import PROTOCOLS

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

    from .console import out_console
    from .inspect import inspect_path

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


@app.command("board")
@handle_errors
def board_cmd(
    format: str = typer.Option("table", "--format", help="table | md | csv | json"),
    model: Optional[str] = typer.Option(None, help="Only this model."),
    run: Optional[str] = typer.Option(None, help="Only this run (recipe name)."),
    board: Optional[Path] = typer.Option(None, help="Leaderboard database."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write the leaderboard to this file as one static "
                                                             "HTML page (sortable tables, plots) instead."),
) -> None:
    """Show the leaderboard across all runs, one table per model and protocol.

    Example: `llmquant board --format md`, `llmquant board --html board.html`
    """
    from .board import Board, group_by_protocol, render_csv, render_json, render_markdown, table_cells
    from .console import out_console, rich_table

    if format not in ("table", "md", "csv", "json"):
        raise UserError(f"--format: {format!r} is not allowed; use table, md, csv or json")
    b = Board(board)
    rows = b.rows(model=model, run=run)
    if html is not None:
        from .console import err_console
        from .report import board_report, write_html

        if html.is_dir():
            raise UserError(f"--html: {html} is a directory; give a file name such as board.html")
        write_html(html, board_report(rows))
        err_console.print(f"wrote {html}", highlight=False)
        return
    if format == "md":
        sys.stdout.write(render_markdown(rows) + "\n")
    elif format == "csv":
        sys.stdout.write(render_csv(rows))
    elif format == "json":
        sys.stdout.write(render_json(rows) + "\n")
    else:
        if not rows:
            out_console.print(f"the leaderboard {b.path} is empty: run a recipe first")
        for (m, _), group in group_by_protocol(rows).items():
            headers, cells = table_cells(group)
            out_console.print(rich_table(f"{m} — {group[0]['protocol']}", headers, cells))


@app.command()
@handle_errors
def advise(
    target: Optional[str] = typer.Option(None, help="Deployment target: cpu | gpu | edge | extreme-edge."),
    tolerance: float = typer.Option(1.0, help="Accuracy you can give up, in points (LLMs: perplexity %)."),
    size_mb: Optional[float] = typer.Option(None, help="The model's size now, MB."),
    latency_ms: Optional[float] = typer.Option(None, help="Its latency now (batch 1), ms."),
    size_goal_mb: Optional[float] = typer.Option(None, help="The size it must fit in, MB."),
    latency_goal_ms: Optional[float] = typer.Option(None, help="The latency it must reach, ms."),
    arch: str = typer.Option("cnn", help="cnn | transformer | rnn | llm | other"),
    run: Optional[Path] = typer.Option(None, "--run", help="A run directory (or its results.json): explain it."),
) -> None:
    """Recommend a quantization method ladder for a deployment, or explain a finished run.

    Examples: `llmquant advise --target cpu --size-mb 40 --latency-ms 12 --latency-goal-ms 5`;
    `llmquant advise --run runs/digits-cnn`
    """
    from .advise import ARCHS, TARGETS, Situation, explain, read_results, recommend
    from .console import out_console

    if run is not None:
        for line in explain(read_results(run)):
            out_console.print(f"• {line}", highlight=False)
        return
    if target not in TARGETS:
        raise UserError(f"--target: {target!r} is not allowed; use {', '.join(TARGETS)} (or --run DIR)")
    if arch not in ARCHS:
        raise UserError(f"--arch: {arch!r} is not allowed; use {', '.join(ARCHS)}")
    for flag, v in (("--tolerance", tolerance), ("--size-mb", size_mb), ("--latency-ms", latency_ms),
                    ("--size-goal-mb", size_goal_mb), ("--latency-goal-ms", latency_goal_ms)):
        if v is not None and v < 0:
            raise UserError(f"{flag}: {v} must be >= 0")
    a = recommend(Situation(target, tolerance, size_mb, latency_ms, size_goal_mb, latency_goal_ms, arch))
    out_console.print(f"[bold]{a.summary}[/]", highlight=False)
    for i, step in enumerate(a.steps, 1):
        out_console.print(f"  {i}. [cyan]{step.method}[/]: {step.why}", highlight=False)
    for note in a.notes:
        out_console.print(f"  note: {note}", highlight=False)


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
    from .console import err_console, out_console
    from .serve.command import serve_path

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


def main() -> None:
    from .cpu import isolate_inductor_cache

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    isolate_inductor_cache()
    app()


if __name__ == "__main__":
    main()
