"""Rich output for the CLI: progress bars and log lines on stderr, tables on stdout."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .progress import Advance

def _console(stderr: bool) -> Console:
    c = Console(stderr=stderr)
    # piped output: don't squeeze tables into 80 columns
    return c if c.is_terminal else Console(stderr=stderr, width=160)


err_console = _console(stderr=True)
out_console = _console(stderr=False)


class RichProgress:
    """Implements llmquant.progress.Progress with a live rich display."""

    def __init__(self, console: Console = err_console):
        self.console = console
        self.bars = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("[dim]{task.fields[note]}"), console=console,
        )

    def __enter__(self) -> "RichProgress":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        tid = self.bars.add_task(description, total=total, note="")

        def advance(n: int = 1, note: str | None = None) -> None:
            self.bars.update(tid, advance=n, **({"note": note} if note else {}))

        try:
            yield advance
        finally:
            t = self.bars.tasks[[x.id for x in self.bars.tasks].index(tid)]
            if t.total is None:
                self.bars.update(tid, total=1, completed=1)
            self.bars.update(tid, note="")
            # keep the display short: finished sub-steps disappear, top-level lines stay
            if description.startswith(("perplexity", "latency")) or ":" in description:
                self.bars.remove_task(tid)

    def message(self, text: str) -> None:
        self.console.print(f"[cyan]•[/] {text}")


def setup_logging(debug: bool) -> None:
    handler = RichHandler(console=err_console, show_path=debug, show_time=False, markup=False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler],
                        format="%(message)s", force=True)
    logging.getLogger("llmquant").setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        quiet_third_party()


def quiet_third_party() -> None:
    """transformers imports torchao when it is installed, which logs kernel-library and pytree
    warnings irrelevant to a CPU run; transformers draws its own tqdm bars. Our display is rich."""
    import torch  # noqa: F401  (torch sets its loggers' levels at import; ours must come after)
    import transformers.utils.logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for noisy in ("torch.utils._pytree", "torchao", "accelerate", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def rich_table(title: str, headers: list[str], rows: list[list[str]], highlight: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        style = "bold green" if highlight and r[0] == highlight else ("dim" if r[0] == "baseline" else None)
        t.add_row(*r, style=style)
    return t
