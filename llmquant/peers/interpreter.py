"""Finding a peer's interpreter and checking, before a run, that the peer is installed there.

Where the interpreter comes from, first found wins: the environment variable of the backend
(`LLMQUANT_GPTQMODEL_PYTHON`, ...; machine-local, so it overrides the shared recipe), the
recipe's `peers:` section (relative paths against the recipe file), else the interpreter
running llmquant. The check runs `<python> -c ...` reading package metadata only (no import
of the peer, which takes seconds), and every failure is one line saying how to install it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..errors import UserError
from . import BACKENDS, OURS, backend_of

PROBE = """
import importlib.metadata as m, importlib.util as u, json, sys
pkg = sys.argv[1]
out = {"python": sys.version.split()[0]}
if u.find_spec(pkg) is None:
    out["missing"] = pkg
else:
    for name in (pkg, "torch", "transformers"):
        try:
            out[name] = m.version(name)
        except m.PackageNotFoundError:
            out[name] = None
print(json.dumps(out))
"""
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Peer:
    """A peer ready to run: its backend, its interpreter, and the versions found there."""

    backend: str
    python: str
    version: str
    packages: dict  # {"torch": ..., "transformers": ..., "python": ...}

    @property
    def label(self) -> str:
        return f"{self.backend} {self.version}"


def resolve_python(backend: str, recipe_peers: Mapping[str, str], resolve: Callable[[str], Path],
                   environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(interpreter, where it came from) for `backend`."""
    spec = BACKENDS[backend]
    if environ.get(spec.env_var):
        return environ[spec.env_var], spec.env_var
    if backend in recipe_peers:
        return str(resolve(recipe_peers[backend])), f"peers.{backend}"
    return sys.executable, "the interpreter running llmquant"


def how_to_install(backend: str) -> str:
    spec = BACKENDS[backend]
    return (f"known to work: {spec.tested}; install it in its own venv ({spec.install}) and point the recipe "
            f"at it (peers: {{{backend}: peers/{backend}/bin/python}}) or set {spec.env_var}")


def probe(backend: str, python: str, origin: str) -> Peer:
    """Check `python` runs and has the backend's package; UserError (one line) otherwise."""
    spec = BACKENDS[backend]
    where = f"{backend} interpreter {python} (from {origin})"
    if os.sep in python and not Path(python).exists():
        raise UserError(f"{where} not found; {how_to_install(backend)}")
    try:
        proc = subprocess.run([python, "-c", PROBE, spec.package], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, env=peer_environ({}))
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"{where} cannot be run ({type(e).__name__}: {e}); {how_to_install(backend)}") from None
    try:
        found = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{where} failed (exit {proc.returncode}: {tail}); {how_to_install(backend)}") from None
    if found.get("missing"):
        raise UserError(f"{backend} is not installed for {python} (from {origin}); {how_to_install(backend)}")
    return Peer(backend, python, found.get(spec.package) or "?",
                {k: v for k, v in found.items() if k != spec.package})


def peer_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment a peer runs in: ours without PYTHONPATH (the peer must not import our
    tree or site-packages), offline, unbuffered, plus the backend's own variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


def check_peers(recipe, environ: Mapping[str, str] = os.environ) -> tuple[dict[str, Peer], list[str]]:
    """Every peer the recipe's variants use, probed once: ({backend: Peer}, notes). A missing or
    broken peer is a UserError naming the variant."""
    peers: dict[str, Peer] = {}
    notes: list[str] = []
    for i, v in enumerate(recipe.variants):
        backend = backend_of(v)
        if backend == OURS or backend in peers:
            continue
        python, origin = resolve_python(backend, recipe.peers, recipe.resolve, environ)
        try:
            peers[backend] = peer = probe(backend, python, origin)
        except UserError as e:
            raise UserError(f"{recipe.path or '<recipe>'}: variants[{i}].backend: {e}") from None
        spec = BACKENDS[backend]
        if peer.version not in spec.versions:
            notes.append(f"{peer.label} (from {origin}) is not a version tested with llmquant: {spec.tested}")
    return peers, notes
