"""A server in a child process (vLLM, or our own server for measurements): start it, copy its
output into a log file, wait until it answers `/health` and lists its model on `/v1/models`, and
stop it cleanly (SIGINT to its process group, then SIGTERM, then SIGKILL)."""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError

log = logging.getLogger("llmquant")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class ManagedServer:
    """Context manager: `with ManagedServer(...) as srv: srv.base_url ...` (stopped on exit)."""

    def __init__(self, argv: list[str], log_path: Path, host: str, port: int, model_name: str,
                 api_key: str | None = None, env: dict[str, str] | None = None, startup_timeout: float = 900,
                 what: str = "server", echo: Callable[[str], None] | None = None):
        self.argv, self.log_path, self.model_name = argv, Path(log_path), model_name
        self.base_url = f"http://{client_host(host)}:{port}"
        self.api_key, self.env, self.startup_timeout, self.what, self.echo = api_key, env, startup_timeout, what, echo
        self.proc: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "ManagedServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        log.debug("starting %s: %s (log: %s)", self.what, " ".join(self.argv), self.log_path)
        try:
            # own process group: a Ctrl-C in the terminal reaches us, and we stop it in order
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         bufsize=1, env=env, start_new_session=True, errors="replace")
        except OSError as e:
            raise UserError(f"cannot start {self.what} ({self.argv[0]}): {e}") from None
        self._pump = threading.Thread(target=self._copy_output, name="llmquant-server-log", daemon=True)
        self._pump.start()
        return self

    def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as f:
            for line in self.proc.stdout:
                f.write(line)
                f.flush()
                self._tail.append(line.rstrip())
                if self.echo:
                    self.echo(line.rstrip())

    def tail(self, n: int = 8) -> str:
        return " | ".join(list(self._tail)[-n:])

    def wait_ready(self, poll_s: float = 0.5) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(timeout=5.0) as http:
            while True:
                assert self.proc is not None
                rc = self.proc.poll()
                if rc is not None:
                    if self._pump:
                        self._pump.join(timeout=5)
                    raise UserError(f"{self.what} exited with code {rc} before it was ready: {self.tail()} "
                                    f"(log: {self.log_path})")
                try:
                    if http.get(f"{self.base_url}/health").status_code == 200:
                        r = http.get(f"{self.base_url}/v1/models", headers=headers)
                        if r.status_code == 401:
                            self.stop()
                            raise UserError(f"{self.what} at {self.base_url} wants an API key we do not have")
                        ids = [m.get("id") for m in r.json().get("data", [])] if r.status_code == 200 else []
                        if self.model_name in ids:
                            return
                        if r.status_code == 200:
                            raise UserError(f"{self.what} at {self.base_url} serves {ids}, not {self.model_name!r}")
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise UserError(f"{self.what} was not ready after {self.startup_timeout:g} s: {self.tail()} "
                                    f"(log: {self.log_path})")
                time.sleep(poll_s)

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C stops it, then re-raises)."""
        assert self.proc is not None
        try:
            return self.proc.wait()
        except KeyboardInterrupt:
            self.stop()
            raise

    def stop(self, grace_s: float = 30.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop after %s; sending the next signal", self.what, sig.name)
        if self._pump:
            self._pump.join(timeout=5)
        return proc.poll()

    def __enter__(self) -> "ManagedServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
