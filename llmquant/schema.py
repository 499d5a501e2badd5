"""Typed-config primitives shared by every recipe kind and every method's config.

Every config is a frozen pydantic model with `extra="forbid"`, so a misspelt key is an error that
names its YAML path; `describe` turns pydantic's errors into those one-line messages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return v


def check_group_size(v: int) -> int:
    if v != -1 and v < 1:
        raise ValueError("must be -1 (one group per row) or a positive divisor of the layer's input features")
    return v


class OutputSpec(Strict):
    dir: str | None = Field(None, description="run directory; default ./runs/<recipe name>")
    board: str | None = Field(None, description="leaderboard SQLite file; default the user data dir")
    shard_size_mb: float = Field(4096, gt=0, le=1 << 20, description="largest safetensors shard of a quantized "
                               "checkpoint (written block by block as the model is quantized)")


class RecipePaths:
    """Where a recipe's relative paths and its run directory lead (shared by the LLM and classic
    recipes; the model sets ``_path`` when it is loaded from a file and has an ``output`` spec)."""

    _path: Path | None
    name: str | None
    output: OutputSpec

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return check_name(self._path.stem) if self._path else "run"

    def resolve(self, p: str) -> Path:
        """A path from the recipe, relative to the recipe's directory."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def run_dir(self) -> Path:
        if self.output.dir:
            return self.resolve(self.output.dir)
        return Path.cwd() / "runs" / self.run_name


# -- pydantic errors as one-line messages -------------------------------------------------------


def yaml_path(loc: tuple, tags: Iterable[str] = ()) -> str:
    """('variants', 2, 'rtn', 'bits') -> 'variants[2].bits': a union tag in `tags` right after a
    list index is not a YAML key and is dropped."""
    tags = set(tags)
    out = ""
    prev_was_list_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_was_list_index = True
            continue
        if prev_was_list_index and part in tags:
            prev_was_list_index = False
            continue
        if part in ("function-before[_from_string(), DatasetSpec]",):
            continue
        out += f".{part}" if out else str(part)
        prev_was_list_index = False
    return out or "(top level)"


def describe(err: dict, tags: Iterable[str] = ()) -> str:
    """One pydantic error as '<yaml path>: <what is wrong>'; `tags` are the variants' method names."""
    tags = sorted(tags)
    where = yaml_path(tuple(err.get("loc", ())), tags)
    kind = err.get("type", "")
    value = err.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown key (check the spelling; see `llmquant validate --help`)"
    if kind == "missing":
        return f"{where}: required but missing"
    if kind == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag", value)
        expected = (err.get("ctx") or {}).get("expected_tags", "")
        return f"{where}.method: {tag!r} is not a known method; allowed: {expected}"
    if kind == "union_tag_not_found":
        return f"{where}.method: required (one of {', '.join(tags)})"
    msg = err.get("msg", "invalid")
    msg = msg.removeprefix("Value error, ")
    if kind == "value_error" and where == "(top level)":
        return msg
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{where}: got {shown}; {msg[0].lower() + msg[1:] if msg else msg}"


def format_validation_error(path: Path | str, e: ValidationError, tags: Iterable[str] = ()) -> str:
    tags = tuple(tags)
    return f"{path}: " + "; ".join(describe(err, tags) for err in e.errors(include_url=False))
