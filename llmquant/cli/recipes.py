"""Commands that take a recipe: `run`, `validate`, `plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .app import app, handle_errors


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
    from ..console import RichProgress, err_console
    from ..pipeline import run as run_recipe
    from ..recipe import load_recipe

    r = load_recipe(recipe)
    if getattr(r, "kind", None) == "classic":
        from ..classic.pipeline import run_classic

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
        from ..serve.command import after_run

        try:
            after_run(r, summary.run_dir, lambda t: err_console.print(t, highlight=False, markup=False, soft_wrap=True))
        except KeyboardInterrupt:
            err_console.print("[yellow]stopped[/]")


def print_summary(summary) -> None:
    """An LLM run: its leaderboard rows (RunSummary.rows), one table per protocol; the winner."""
    print_rows(summary.rows, summary.decision, lambda model, group: f"{model} — {summary.baseline.protocol.describe()}")


def print_classic_summary(summary) -> None:
    print_rows(summary.rows, summary.decision, lambda model, group: f"{model} — {group[0]['protocol']}")


def print_rows(rows: list[dict], decision, title) -> None:
    """Rows as tables (one per model and protocol, titled title(model, group)), then the winner
    and the decision's warnings."""
    from ..board import Row, group_by_protocol, table_cells
    from ..console import out_console, rich_table

    for (model, _), group in group_by_protocol([Row(r) for r in rows]).items():
        headers, cells = table_cells(group)
        out_console.print(rich_table(title(model, group), headers, cells, highlight=decision.winner))
    verdict = decision.winner or "none"
    out_console.print(f"[bold]winner:[/] [green]{verdict}[/] — {decision.reason}", highlight=False)
    for w in decision.warnings:
        out_console.print(f"[bold yellow]warning:[/] {w}", highlight=False, markup=True)


@app.command()
@handle_errors
def validate(recipes: list[Path] = typer.Argument(..., help="Recipe YAML file(s).")) -> None:
    """Check recipes without loading model weights: schema, files, layer shapes vs bits/group size.

    Example: `llmquant validate recipes/*.yaml`
    """
    from ..console import out_console
    from ..preflight import preflight
    from ..recipe import load_recipe

    for path in recipes:
        r = load_recipe(path)
        methods = ", ".join(f"{v.name} ({v.method})" for v in r.variants) or "no variants"
        if getattr(r, "kind", None) == "classic":
            from ..classic.preflight import preflight_classic

            rep = preflight_classic(r)
            what, notes = f"classic model {rep.model}; data {rep.data}", list(rep.notes)
        else:
            report = preflight(r)
            what, notes = f"model {report.source.label} ({report.source.kind})", list(report.notes)
            notes += [f"will not fit this machine (llmquant plan {path}): {problem}"
                      for problem in (report.plan.problems if report.plan else [])]
        out_console.print(f"[green]ok[/] {path}: {what}; {methods}", highlight=False)
        for note in notes:
            out_console.print(f"   note: {note}", highlight=False)


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

    from ..console import err_console, out_console
    from ..plan import plan_for, render_json, render_text
    from ..recipe import load_recipe

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

    from ..plan import this_machine
    from ..serve.fit import GpuMemory

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
