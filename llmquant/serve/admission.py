"""Admission for the built-in server: one generation at a time, a bounded queue behind it, and 429
beyond that; and a streaming response that gives its place back however the stream ends."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from .openai_api import ApiError


class Admission:
    def __init__(self, concurrent: int, queue: int):
        self.capacity, self.concurrent = concurrent + queue, concurrent
        self.inside = 0  # running + waiting
        self._sem: asyncio.Semaphore | None = None

    def enter(self) -> "Ticket":
        if self.inside >= self.capacity:
            raise ApiError(429, f"server busy: {self.inside} requests running or queued (limit {self.capacity}); "
                                "retry later", code="queue_full", headers={"Retry-After": "1"})
        self.inside += 1
        return Ticket(self)

    @property
    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrent)
        return self._sem


class Ticket:
    """A place in the queue; `async with` waits for a slot. `release` is idempotent."""

    def __init__(self, adm: Admission):
        self.adm, self.holding, self.released = adm, False, False

    async def __aenter__(self) -> "Ticket":
        await self.adm.sem.acquire()
        self.holding = True
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.adm.sem.release()
        if not self.released:
            self.released = True
            self.adm.inside -= 1


class GuardedStream(StreamingResponse):
    """A stream whose generator is closed and whose ticket is released however it ends
    (finished, client gone, or never started)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()  # type: ignore[union-attr]
            finally:
                self._on_close()
