"""Run-directory layout, content hashes and atomic writes.

Every finished step of a run is recorded under the run directory with the content hash of
what produced it, so a rerun skips it. Files and directories are written to a temporary
name and renamed into place: a crash never leaves something half-written that looks done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def content_hash(obj: Any, length: int = 16) -> str:
    """A stable hash of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: Path, full_below: int = 256 << 20) -> str:
    """sha256 of the whole file when small; of its size and 20 spread 1 MiB blocks when large.

    Used to key caches on model weights without reading tens of GB on every run.
    """
    size = path.stat().st_size
    if size <= full_below:
        return file_sha256(path)
    h = hashlib.sha256(str(size).encode())
    block = 1 << 20
    with open(path, "rb") as f:
        for k in range(20):
            f.seek((size - block) * k // 19)
            h.update(f.read(block))
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None when the file is absent or unreadable (e.g. torn)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final`.

    On any error the temporary directory is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def safe_child(root: Path, name: str) -> Path:
    """`root / name`, refusing names that would escape `root`."""
    root = Path(root).resolve()
    child = (root / name).resolve()
    if child == root or root not in child.parents:
        raise UserError(f"name {name!r} would write outside {root}")
    return child


@dataclass(frozen=True)
class RunDir:
    """Where one recipe's run keeps everything it produces."""

    root: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def base_model(self) -> Path:
        """The source model as a plain HF directory (written when the source is a GGUF file)."""
        return self.root / "base-model"

    def variant(self, name: str) -> Path:
        return safe_child(self.root / "variants", name)

    def checkpoint(self, name: str) -> Path:
        return self.variant(name) / "checkpoint"

    def result(self, name: str) -> Path:
        return self.variant(name) / "result.json"

    def baseline_result(self) -> Path:
        return self.root / "baseline" / "result.json"

    def prepare(self) -> None:
        for d in (self.root, self.cache, self.logs):
            d.mkdir(parents=True, exist_ok=True)
