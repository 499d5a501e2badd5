"""Choosing and starting an engine: vLLM where it is installed and a CUDA GPU is present, the
built-in server otherwise. `serve_foreground` is `llmquant serve`; `start_background` gives a
server in a child process on a free loopback port (after-run checks, latency over HTTP)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..recipe import ServeSpec
from .artifact import ServeTarget
from .process import ManagedServer, free_port

log = logging.getLogger("llmquant")

API_KEY_ENV = "LLMQUANT_API_KEY"
FOREGROUND_NEEDS = {"vllm": ("httpx",), "local": ("fastapi", "uvicorn")}


def require(*modules: str) -> None:
    """The serve extra's packages, with a pip hint when one is missing (as transformers' quantizers do)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"serving needs {', '.join(missing)}: pip install 'llmquant[serve]'")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_engine(choice: str) -> str:
    vllm_ok = importlib.util.find_spec("vllm") is not None
    if choice == "auto":
        return "vllm" if vllm_ok and cuda_available() else "local"
    if choice == "vllm":
        if not vllm_ok:
            raise UserError("engine vllm: vLLM is not installed here: pip install 'llmquant[vllm]' (needs a CUDA "
                            "GPU); or use engine local")
        if not cuda_available():
            raise UserError("engine vllm: no CUDA GPU is visible; use engine local (or --dry-run to see the command)")
        return "vllm"
    if choice == "local":
        return "local"
    raise UserError(f"--engine: {choice!r} is not allowed; use auto, vllm or local")


def release_gpu_cache() -> None:
    """Give back what torch's caching allocator holds in this process, before vLLM measures free memory."""
    import gc

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def api_key(serve: ServeSpec, given: str | None = None) -> str | None:
    """The key clients must send: given (flag), else $LLMQUANT_API_KEY, else the recipe's named variable."""
    if given:
        return given
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV]
    if serve.api_key_env:
        key = os.environ.get(serve.api_key_env)
        if not key:
            raise UserError(f"serve.api_key_env: ${serve.api_key_env} is not set; export the key there")
        return key
    return None


def run_root(target: ServeTarget) -> Path | None:
    """The run directory a checkpoint belongs to (runs.RunDir layout), if any."""
    if target.run_dir:
        return target.run_dir
    ckpt = target.checkpoint
    if ckpt.name == "checkpoint" and ckpt.parent.parent.name == "variants":
        return ckpt.parent.parent.parent
    if ckpt.name == "base-model":
        return ckpt.parent
    return None


def log_path(target: ServeTarget, engine: str, tag: str = "serve") -> Path:
    """Server logs go to the run's logs/ folder, else to the user cache."""
    from platformdirs import user_cache_dir

    root = run_root(target)
    folder = root / "logs" if root else Path(user_cache_dir("llmquant")) / "serve"
    return folder / f"{tag}-{target.name}-{engine}.log"


def load_decoder(target: ServeTarget, serve: ServeSpec, trust_remote_code: bool = False):
    from ..formats.load import load_checkpoint
    from ..loading.runtime import pick_device, resolve_dtype, set_threads
    from .textgen import Decoder

    set_threads()
    device = pick_device(serve.local.device)
    model, tok, _ = load_checkpoint(target.checkpoint, resolve_dtype(serve.local.dtype, device), device,
                                    trust_remote_code, compile_kernels=serve.local.compile)
    decoder = Decoder(model, tok)
    decoder.warm_up()  # compiles the packed layers' kernels now rather than in the first request
    return decoder


def local_settings(serve: ServeSpec, name: str, key: str | None):
    from .local import LocalSettings

    loc = serve.local
    return LocalSettings(model_name=name, api_key=key, max_tokens=loc.max_tokens, max_body_bytes=loc.max_body_bytes,
                         queue=loc.queue)


def serve_foreground(target: ServeTarget, serve: ServeSpec, engine: str, key: str | None,
                     trust_remote_code: bool = False, say: Callable[[str], None] = log.info) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt comes back to the caller once the server is down)."""
    name = serve.model_name or target.name
    require(*FOREGROUND_NEEDS[engine])
    if engine == "vllm":
        from . import vllm

        if serve.port == 0:
            serve = serve.model_copy(update={"port": free_port(serve.host)})
        release_gpu_cache()
        srv = vllm.launch(target, serve, name, serve.port, key, log_path(target, "vllm"), trust_remote_code)
        srv.echo = say
        srv.start()
        srv.wait_ready()
        say(f"serving {name!r} from {target.checkpoint} with vLLM at {srv.base_url}/v1 (Ctrl-C stops it)")
        rc = srv.wait()
        if rc:
            raise UserError(f"vllm serve exited with code {rc}: {srv.tail()} (log: {srv.log_path})")
        return
    from .local import create_app, model_thread
    from .running import serve_forever

    say(f"loading {target.checkpoint} ({target.info.format}) for the built-in server")
    pool = model_thread()  # loads, warms up and generates: one thread for all torch work
    try:
        decoder = pool.submit(load_decoder, target, serve, trust_remote_code).result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    app = create_app(decoder, local_settings(serve, name, key), pool)
    serve_forever(app, serve.host, serve.port, on_ready=lambda port: say(
        f"serving {name!r} at http://{serve.host}:{port}/v1 (built-in server; Ctrl-C stops it)"))


def local_argv(target: ServeTarget, serve: ServeSpec, name: str, port: int) -> list[str]:
    loc = serve.local
    return [sys.executable, "-m", "llmquant.cli", "serve", str(target.checkpoint), "--engine", "local",
            "--host", "127.0.0.1", "--port", str(port), "--name", name, "--dtype", loc.dtype, "--device", loc.device,
            "--max-tokens", str(loc.max_tokens), "--queue", str(loc.queue),
            "--max-body-bytes", str(loc.max_body_bytes), "--compile" if loc.compile else "--no-compile"]


def start_background(target: ServeTarget, serve: ServeSpec, engine: str, key: str | None = None,
                     trust_remote_code: bool = False, tag: str = "serve") -> ManagedServer:
    """A server in a child process on a free loopback port; use it as a context manager."""
    require(*FOREGROUND_NEEDS[engine], "httpx", "openai")  # we wait for it and talk to it
    name = serve.model_name or target.name
    port = free_port()
    loopback = serve.model_copy(update={"host": "127.0.0.1", "port": port})
    if engine == "vllm":
        from . import vllm

        release_gpu_cache()
        return vllm.launch(target, loopback, name, port, key, log_path(target, "vllm", tag), trust_remote_code)
    argv = local_argv(target, loopback, name, port)
    if trust_remote_code:
        argv.append("--trust-remote-code")
    env = {API_KEY_ENV: key or ""}  # never a key inherited from our own environment by accident
    return ManagedServer(argv, log_path(target, "local", tag), "127.0.0.1", port, name, api_key=key, env=env,
                         startup_timeout=600, what="built-in server")
