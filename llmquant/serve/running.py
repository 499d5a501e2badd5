"""Running the built-in server's app with uvicorn: in the foreground until Ctrl-C, or from a thread
on a loopback port the OS picks (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from fastapi import FastAPI


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "warning"):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=5, lifespan="on")


def serve_forever(app: FastAPI, host: str, port: int, on_ready: Callable[[int], None] | None = None) -> None:
    """Run in the foreground until Ctrl-C / SIGTERM (uvicorn shuts down gracefully)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn_config(app, host, port))
    if on_ready:
        threading.Thread(target=_announce, args=(server, sock, on_ready), daemon=True).start()
    server.run(sockets=[sock])


def _announce(server, sock, on_ready) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        on_ready(sock.getsockname()[1])


class BackgroundServer:
    """The app served from a thread on a loopback port the OS picks (tests, benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="llmquant-server", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
