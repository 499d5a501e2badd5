"""The typer app, its global options (--debug, --version), the `env` command and the error handling
every command shares: user errors are one red line and exit 2."""

from __future__ import annotations

import functools
from typing import Callable

import typer

from ..errors import UserError

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
        from ..cpu import environment_lines

        typer.echo(environment_lines()[0])
        typer.echo(environment_lines()[1])
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version, torch's and the CPU capability detected; exit.")) -> None:
    from ..console import setup_logging

    STATE["debug"] = debug
    setup_logging(debug)


@app.command("env")
def env_command() -> None:
    """What this machine offers llmquant: versions, CPU model, torch's dispatch capability (and
    whether ATEN_CPU_CAPABILITY emulates a lesser CPU), bf16, int4 layout, GPU, threads."""
    from ..cpu import environment_lines

    for line in environment_lines(full=True):
        typer.echo(line)


def handle_errors(fn: Callable) -> Callable:
    """User errors: one red line, exit 2. Bugs: one line and exit 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..console import err_console

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
