"""Progress reporting passed into long-running library code.

The library never prints: it reports through a `Progress` object that the caller supplies.
The CLI passes a rich progress display; tests and library users get `NullProgress`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

log = logging.getLogger("llmquant")

Advance = Callable[..., None]
"""advance(n=1, note=None): move a task forward, optionally with a short status note."""


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> "contextmanager[Advance]": ...

    def message(self, text: str) -> None: ...


class NullProgress:
    """Reports nothing beyond debug logs."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        log.debug("start: %s (%s steps)", description, total)

        def advance(n: int = 1, note: str | None = None) -> None:
            if note:
                log.debug("%s: %s", description, note)

        yield advance
        log.debug("done: %s", description)

    def message(self, text: str) -> None:
        log.info(text)


NULL_PROGRESS = NullProgress()
