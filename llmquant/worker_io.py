"""A worker process and its progress: JSON lines on the worker's stdout, relayed to a `Progress`.

One protocol for every worker llmquant starts (the isolated evaluation, the peer tools). Each
line is one event:

    {"event": "start", "task": NAME, "total": N | null}
    {"event": "advance", "task": NAME, "n": 1, "note": TEXT | null}
    {"event": "end", "task": NAME}
    {"event": "message", "text": TEXT}

Other lines are ignored. Standard library only, and nothing else from llmquant: the peer workers
load this file by its path in the peer's own interpreter, where llmquant is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path


class JsonLinesProgress:
    """The worker's side: a `Progress` that writes events to `stream` (default: sys.stdout, looked
    up at each write so that a redirected stdout is followed)."""

    def __init__(self, stream=None):
        self.stream = stream

    def _emit(self, **msg) -> None:
        out = self.stream if self.stream is not None else sys.stdout
        out.write(json.dumps(msg) + "\n")
        out.flush()

    @contextmanager
    def task(self, description: str, total: int | None = None):
        self._emit(event="start", task=description, total=total)

        def advance(n: int = 1, note: str | None = None) -> None:
            self._emit(event="advance", task=description, n=n, note=note)

        try:
            yield advance
        finally:
            self._emit(event="end", task=description)

    def message(self, text: str) -> None:
        self._emit(event="message", text=text)


def relay(line: str, tasks: dict, progress) -> None:
    """Replay one event line on `progress`; `tasks` holds the tasks the worker has open."""
    try:
        msg = json.loads(line)
    except ValueError:
        return
    if not isinstance(msg, dict):
        return
    kind, name = msg.get("event"), msg.get("task")
    if kind == "start":
        cm = progress.task(name, msg.get("total"))
        tasks[name] = (cm, cm.__enter__())
    elif kind == "advance" and name in tasks:
        tasks[name][1](msg.get("n", 1), note=msg.get("note"))
    elif kind == "end" and name in tasks:
        tasks.pop(name)[0].__exit__(None, None, None)
    elif kind == "message" and msg.get("text") is not None:
        progress.message(str(msg["text"]))


def run_relayed(cmd: list[str], env: dict, log_path: Path, progress, cwd: Path | None = None) -> int:
    """Start the worker, relay its progress lines, and return its exit code. Its stderr goes to
    `log_path`; the worker is stopped if we are interrupted; tasks it left open are closed."""
    tasks: dict[str, tuple] = {}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=cwd)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                relay(line, tasks, progress)
        except BaseException:  # interrupted: stop the worker (its stdout closes before it has exited)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            rc = proc.wait()
            for cm, _ in tasks.values():
                cm.__exit__(None, None, None)
    return rc
