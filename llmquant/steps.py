"""The run engine's cached steps: a step's inputs hash to a key; a finished step is recorded
with that key; a rerun with the same key reuses the record instead of redoing the step.

Three shapes, used by the LLM pipeline, the classic pipeline and `llmquant eval`:

- `cached_result`: a JSON record {"key": KEY, "result": ...} (an evaluation's result.json);
- `cached_dir`: a directory written atomically (a checkpoint), plus a manifest
  {"key": KEY, ...} written once the directory is in place;
- `cached_file`: one file written atomically when it is absent (or its record is stale).

Nothing half-written ever looks finished: directories and files are built under a temporary
name and renamed into place (runs.py), and a manifest is written only after its directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from .runs import atomic_dir, atomic_write_bytes, atomic_write_json, read_json

T = TypeVar("T")


def _same(value: Any) -> Any:
    return value


def cached_result(path: Path, key: str, compute: Callable[[], T], *, fresh: bool = False,
                  encode: Callable[[T], Any] = _same, decode: Callable[[Any], T] = _same) -> tuple[T, bool]:
    """(result, computed_now): the result recorded at `path` under `key`, unless `fresh`; else
    compute() recorded there as {"key": key, "result": encode(result)}."""
    cached = None if fresh else read_json(path)
    if isinstance(cached, dict) and cached.get("key") == key:
        return decode(cached["result"]), False
    result = compute()
    atomic_write_json(path, {"key": key, "result": encode(result)})
    return result, True


def cached_dir(target: Path, manifest_path: Path, key: str, build: Callable[[Path], dict], *,
               fresh: bool = False, ready: Callable[[Path], bool] = Path.is_dir) -> tuple[dict, bool]:
    """(manifest, built_now) for the step that writes the directory `target`.

    Reused when `manifest_path` records `key` and ready(target) holds, unless `fresh`. Else the
    stale manifest is removed first (an interrupted build never looks finished), build(tmp)
    writes into a temporary directory that replaces `target` when it returns, and the manifest
    {"key": key, **build's fields} is written after it."""
    manifest = None if fresh else read_json(manifest_path)
    if isinstance(manifest, dict) and manifest.get("key") == key and ready(target):
        return manifest, False
    Path(manifest_path).unlink(missing_ok=True)
    with atomic_dir(target) as tmp:
        fields = build(tmp)
    manifest = {"key": key, **fields}
    atomic_write_json(manifest_path, manifest)
    return manifest, True


def cached_file(path: Path, data: Callable[[], bytes], *, key: str | None = None, record: Path | None = None,
                fresh: bool = False) -> bool:
    """Write data() to `path` atomically unless it is there already and not `fresh`; True when
    written now. Without `record` the file's name carries its key; with one, the file counts only
    while `record` holds {"sha": key} (written after the file)."""
    done = not fresh and Path(path).is_file() and (record is None or read_json(record) == {"sha": key})
    if done:
        return False
    atomic_write_bytes(path, data())
    if record is not None:
        atomic_write_json(record, {"sha": key})
    return True
