"""Commands that read results: `board` (the leaderboard), `advise` (a method ladder, or a run explained)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .app import app, handle_errors


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
    from ..board import Board, group_by_protocol, render_csv, render_json, render_markdown, table_cells
    from ..console import out_console, rich_table

    if format not in ("table", "md", "csv", "json"):
        raise UserError(f"--format: {format!r} is not allowed; use table, md, csv or json")
    b = Board(board)
    rows = b.rows(model=model, run=run)
    if html is not None:
        from ..console import err_console
        from ..report import board_report, write_html

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
    from ..advise import ARCHS, TARGETS, Situation, explain, read_results, recommend
    from ..console import out_console

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
