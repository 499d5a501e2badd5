"""Running every calibration batch through one block, each batch in its own thread (a
coroutine: only one computes at a time), with hooks that observe and, staged, park the batches
at each input group until the group is solved. Used by the sequential loop (sequential.py)."""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch
from torch import Tensor

from .blockrun import BlockHandler, BlockRun, InputGroup, _first, _input_of


class _StopForward(Exception):
    pass


class _Abort(BaseException):
    """Unwinds a parked batch thread when the block is abandoned."""


class _Stopped(BaseException):
    """Ends a batch's forward right after it was observed (it is re-run later instead of parked)."""



class _BatchThread:
    """One batch's forward through the block, run as a coroutine: the main thread lets it run
    until it parks (at a group's first module) or finishes; only one of them runs at a time."""

    def __init__(self, fn: Callable[[], Any], num_threads: int):
        self.fn, self.num_threads = fn, num_threads
        self.resume, self.parked = threading.Event(), threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = self.aborted = self.stopped = False
        self.at: int | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        self.resume.wait()
        self.resume.clear()
        try:
            if not self.aborted:
                torch.set_num_threads(self.num_threads)
                with torch.no_grad():
                    self.result = self.fn()
        except _Abort:
            pass
        except _Stopped:
            self.stopped = True
        except BaseException as e:  # handed to the main thread, which re-raises it
            self.error = e
        finally:
            self.done = True
            self.parked.set()

    def park(self, at: int) -> None:
        """Called from inside the forward (a hook): hand control back and wait."""
        self.at = at
        self.parked.set()
        self.resume.wait()
        self.resume.clear()
        if self.aborted:
            raise _Abort

    def step(self) -> None:
        """Main thread: let this batch run until it parks or ends; re-raise its error."""
        self.parked.clear()
        self.resume.set()
        self.parked.wait()
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def abort(self) -> None:
        if not self.done:
            self.aborted = True
            self.resume.set()
        self.thread.join()


class _Runner:
    """Runs all batches of one block, with hooks that observe (and, staged, park and solve)."""

    def __init__(self, run: BlockRun, handler: BlockHandler | None):
        self.run, self.handler = run, handler
        self.current: _BatchThread | None = None
        self.num_threads = torch.get_num_threads()

    def _call(self, b: int) -> Callable[[], Tensor]:
        run = self.run

        def call() -> Tensor:
            with run.compute():
                return _first(run.block(run.inputs[b], *run.kwargs[b]["args"], **run.kwargs[b]["kwargs"]))
        return call

    def _hooks(self, groups: list[InputGroup], park: bool) -> list:
        handles = []
        for gi, group in enumerate(groups):
            def hook(module, args, kwargs, gi=gi, group=group):
                self.handler.observe(group, _input_of(args, kwargs))
                if park:
                    self.current.park(gi)
            handles.append(group.modules[0].register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    def forward(self, observe: bool = False, keep_outputs: bool = False) -> None:
        """Each batch through the block in turn. Observing (every called group), the inputs are
        kept unless `keep_outputs`; otherwise each batch's input is replaced by its output as
        soon as it is done."""
        groups = [g for g in self.run.groups if g.called] if observe else []
        handles = self._hooks(groups, park=False)
        try:
            for b in range(len(self.run.inputs)):
                t = self.current = _BatchThread(self._call(b), self.num_threads)
                try:
                    t.step()
                finally:
                    t.abort()
                if not observe or keep_outputs:
                    self.run.inputs[b] = t.result
        finally:
            for h in handles:
                h.remove()

    def staged(self, max_parked: int | None = None) -> None:
        """All batches through the block, solving each group when every batch has reached it;
        each batch's input is replaced by its output when it is done.

        The first `max_parked` batches (all by default) wait at each group with their
        activations alive: one forward per block. The others stop once observed and are run
        again from the block's input for the next group (and for the output), through the
        groups solved so far: the same numbers, less memory, more compute (0 parked: the
        reference scripts' re-run per group, with early stops)."""
        groups = [g for g in self.run.groups if g.called]
        n = len(self.run.inputs)
        limit = n if max_parked is None else max(0, min(n, max_parked))
        self.solved, self.target, self.park_this = -1, 0, True
        handles = []
        for gi, group in enumerate(groups):
            def hook(module, args, kwargs, gi=gi, group=group):
                if gi <= self.solved:  # a batch run again passes groups solved before
                    return
                if gi != self.target:
                    raise RuntimeError(f"{self.run.name}: {group.names[0]} was called out of the order batch 0 showed")
                self.handler.observe(group, _input_of(args, kwargs))
                if not self.park_this:
                    raise _Stopped
                self.current.park(gi)
            handles.append(group.modules[0].register_forward_pre_hook(hook, with_kwargs=True))
        threads: list[_BatchThread | None] = [None] * n
        try:
            for gi, group in enumerate(groups):
                self.target = gi
                for b in range(n):
                    t = threads[b] or _BatchThread(self._call(b), self.num_threads)
                    threads[b] = self.current = t
                    self.park_this = b < limit
                    t.step()
                    if t.stopped:
                        threads[b] = None
                    elif t.done or t.at != gi:
                        raise RuntimeError(
                            f"{self.run.name}: batch {b} did not reach {group.names[0]} where batch 0 did "
                            "(data-dependent control flow is not supported by the staged loop; "
                            "turn true_sequential off)")
                self.handler.solve(group)
                self.solved = gi
            self.target = len(groups)
            for b in range(n):
                t = threads[b] or _BatchThread(self._call(b), self.num_threads)
                threads[b] = self.current = t
                t.step()
                if not t.done or t.stopped:
                    raise RuntimeError(f"{self.run.name}: batch {b} called a group's module twice")
                self.run.inputs[b] = t.result
        finally:
            for t in threads:
                if t is not None:
                    t.abort()
            for h in handles:
                h.remove()

