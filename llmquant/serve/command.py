"""`llmquant serve` and the recipe's after-run step, as library functions (the CLI only parses).

Settings come from the run's recipe (`serve:` section) when there is one, then the command's flags."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from ..errors import UserError
from ..recipe import Recipe, ServeSpec, load_recipe
from ..runs import read_json
from .artifact import ServeTarget, resolve_target
from .engine import api_key, local_argv, resolve_engine, serve_foreground, start_background

log = logging.getLogger("llmquant")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict):
            out[k] = _merge(out.get(k) or {}, v)
        elif v is not None:
            out[k] = v
    return out


def _flag_error(e: ValidationError) -> UserError:
    parts = []
    for err in e.errors(include_url=False):
        loc = err.get("loc", ())
        flag = "--" + str(loc[-1]).replace("_", "-") if loc else "serve"
        parts.append(f"{flag}: {err.get('input')!r}: {err.get('msg', 'invalid').removeprefix('Value error, ')}")
    return UserError("; ".join(parts))


def recipe_of(target: ServeTarget, recipe_path: Path | None) -> Recipe | None:
    if recipe_path:
        return load_recipe(recipe_path)
    if target.run_dir:
        stored = (read_json(target.run_dir / "results.json") or {}).get("recipe")
        if stored and Path(stored).is_file():
            return load_recipe(stored)
    return None


def serve_settings(recipe: Recipe | None, overrides: dict[str, Any]) -> ServeSpec:
    base = recipe.serve.model_dump() if recipe else {}
    try:
        return ServeSpec.model_validate(_merge(base, overrides))
    except ValidationError as e:
        raise _flag_error(e) from None


def describe_plan(target: ServeTarget, spec: ServeSpec, engine: str, key: str | None, trust: bool) -> list[str]:
    """What `serve` would run, without running it (--dry-run)."""
    name = spec.model_name or target.name
    lines = [f"target: {target.checkpoint} ({target.info.format}) as {name!r}, engine {engine}"]
    if engine == "local":
        lines.append("command: " + shlex.join(["llmquant", *local_argv(target, spec, name, spec.port)[3:]]))
        lines.append(local_memory_line(target, spec, trust))
        return lines
    from . import vllm

    gpus = vllm.visible_gpus()
    if spec.vllm.fit_check and not gpus and not spec.vllm.gpu_memory_gib:
        lines.append("fit: not checked (no GPU visible here; pass --gpu-memory-gib to plan for one)")
        spec = spec.model_copy(update={"vllm": spec.vllm.model_copy(update={"fit_check": False})})
    launch = vllm.prepare(target, spec, name, spec.port, key, trust, gpus=gpus)
    redacted = {k: "***" for k in launch.env}
    lines.append("command: " + (" ".join(f"{k}={v}" for k, v in redacted.items()) + " " if redacted else "")
                 + shlex.join(["vllm", *launch.argv[launch.argv.index("serve"):]]))
    lines += [f"note: {n}" for n in launch.notes]
    return lines


def local_memory_line(target: ServeTarget, spec: ServeSpec, trust: bool) -> str:
    """The built-in server's estimated peak (llmquant plan's arithmetic) against this machine's RAM."""
    from ..loading.runtime import resolve_dtype
    from ..plan import checkpoint_estimate
    from ..plan.build import gib
    from ..plan.machine import host_memory

    device = spec.local.device if spec.local.device != "auto" else "cpu"
    dtype = resolve_dtype(spec.local.dtype, device)
    try:
        est = checkpoint_estimate(target.checkpoint, dtype, spec.local.max_tokens + 128, trust)
    except (UserError, ValueError) as e:
        return f"memory: not estimated ({e})"
    total, free = host_memory()
    verdict = "fits" if est.host <= free else ("fits only with memory freed" if est.host <= total else "does NOT fit")
    return (f"memory: ~{gib(est.host)} peak in {dtype} with a {spec.local.max_tokens}-token request "
            f"(estimate, as `llmquant plan`); this machine has {gib(total)} ({gib(free)} free): {verdict}")


def serve_path(path: Path, overrides: dict[str, Any], variant: str | None = None, recipe_path: Path | None = None,
               key: str | None = None, dry_run: bool = False, trust_remote_code: bool | None = None,
               say: Callable[[str], None] = log.info) -> list[str] | None:
    """Serve a run's winner (or `variant`) or a checkpoint; returns the plan's lines for a dry run."""
    target = resolve_target(path, variant)
    recipe = recipe_of(target, recipe_path)
    spec = serve_settings(recipe, overrides)
    trust = trust_remote_code if trust_remote_code is not None else bool(recipe and recipe.model.trust_remote_code)
    k = api_key(spec, key)
    if dry_run:
        engine = spec.engine if spec.engine != "auto" else resolve_engine("auto")
        return describe_plan(target, spec, engine, k, trust)
    engine = resolve_engine(spec.engine)
    if spec.host not in ("127.0.0.1", "localhost", "::1") and not k:
        say(f"warning: listening on {spec.host} without an API key: anyone who reaches this port can use the model")
    serve_foreground(target, spec, engine, k, trust, say)
    return None


def after_run(recipe: Recipe, run_dir: Path, say: Callable[[str], None] = log.info) -> str | None:
    """The recipe's `serve.after_run`: `check` starts the winner's server, asks one chat question
    and stops it (returns the answer); `serve` serves it until Ctrl-C."""
    spec = recipe.serve
    if spec.after_run == "none":
        return None
    results = read_json(run_dir / "results.json") or {}
    if not (results.get("winner") or {}).get("name"):
        say("serve: no winner to serve")
        return None
    target = resolve_target(run_dir)
    engine = resolve_engine(spec.engine)
    key = api_key(spec)
    if spec.after_run == "serve":
        serve_foreground(target, spec, engine, key, recipe.model.trust_remote_code, say)
        return None
    from .client import chat_once

    say(f"serve check: starting the {engine} engine for {target.name}")
    with start_background(target, spec, engine, key, recipe.model.trust_remote_code, tag="check") as srv:
        answer = chat_once(srv.base_url, srv.model_name, spec.check_message, key)
    say(f"serve check: {spec.check_message!r} -> {answer!r}")
    return answer
