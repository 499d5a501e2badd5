"""The `llmquant` command line. Each command parses, calls one library function, prints.

app.py holds the typer app and the shared error handling; one module per group of commands
registers its commands on it: recipes.py (run, validate, plan), checkpoints.py (eval, inspect),
leaderboard.py (board, advise), serve.py (serve).
"""

from __future__ import annotations

import os

# each module registers its commands on app; imported in the order `llmquant --help` lists them
from . import recipes  # noqa: F401,I001
from . import checkpoints  # noqa: F401
from . import leaderboard  # noqa: F401
from . import serve  # noqa: F401
from .app import STATE, app, handle_errors  # noqa: F401

__all__ = ["app", "main"]


def main() -> None:
    from ..cpu import isolate_inductor_cache

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    isolate_inductor_cache()
    app()
