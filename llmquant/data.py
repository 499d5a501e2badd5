"""Corpora to token streams, and calibration crops.

Sources:
  - a local file: .txt/.raw/.tokens (the whole text), .jsonl/.json (records' `field`, joined
    with blank lines), .parquet (column `field`, needs the [data] extra);
  - `builtin:pydoc`: English prose that ships with CPython (pydoc_data topics), so tests and
    the demo need no download; split `train` or `test` (every 5th topic is test);
  - hub names (`wikitext2`, `c4`) through `datasets`, when the hub is reachable.
The eval stream is the corpus joined and tokenised once; calibration is N random crops of
`seqlen` tokens drawn with a seeded generator (the GPTQ reference sampler).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .errors import UserError
from .recipe import DatasetSpec
from .runs import atomic_write_bytes, content_hash

log = logging.getLogger("llmquant")

TEXT_SUFFIXES = {".txt", ".raw", ".tokens", ".md"}
HUB_DATASETS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "text"),
    "c4": ("allenai/c4", "en", "text"),
}
MIN_CALIBRATION_SAMPLES = 100


@dataclass(frozen=True)
class Corpus:
    text: str
    sha256: str
    label: str


def _pydoc_text(split: str | None, field: str) -> str:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    if split in (None, "all"):
        chosen = keys
    elif split in ("train", "test"):
        chosen = [k for i, k in enumerate(keys) if (i % 5 == 0) == (split == "test")]
    else:
        raise UserError(f"{field}.split: {split!r} is not a split of builtin:pydoc; allowed: train, test, all")
    return "\n\n".join(topics[k] for k in chosen)


def _read_text_file(path: Path, field: str) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:1 << 20]:
        raise UserError(f"{field}: {path} looks binary (NUL bytes); give a UTF-8 text, .jsonl or .parquet file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{field}: {path} is not UTF-8 text (byte {e.start}); give a UTF-8 text file") from None


def _read_jsonl(path: Path, key: str, field: str) -> str:
    texts = []
    text = _read_text_file(path, field)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{field}: {path} is not valid JSON ({e})") from None
        records = data if isinstance(data, list) else [data]
        lines = [(i + 1, r) for i, r in enumerate(records)]
    else:
        lines = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((n, json.loads(line)))
            except ValueError:
                raise UserError(f"{field}: {path} line {n} is not valid JSON") from None
    for n, rec in lines:
        if not isinstance(rec, dict) or key not in rec:
            raise UserError(f"{field}.field: record {n} of {path} has no {key!r} field")
        if not isinstance(rec[key], str):
            raise UserError(f"{field}.field: record {n} of {path}: {key!r} is not a string")
        texts.append(rec[key])
    return "\n\n".join(texts)


def _read_parquet(path: Path, key: str, field: str) -> str:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{field}: reading {path} needs pyarrow: pip install 'llmquant[data]'") from None
    table = pq.read_table(path)
    if key not in table.column_names:
        raise UserError(f"{field}.field: {path} has no column {key!r}; columns: {', '.join(table.column_names)}")
    return "\n\n".join(str(x) for x in table.column(key).to_pylist() if x is not None)


def _read_hub(name: str, split: str | None, field: str) -> str:
    repo, config, column = HUB_DATASETS[name]
    try:
        import datasets
    except ImportError:
        raise UserError(f"{field}: {name!r} is a hub dataset and needs: pip install 'llmquant[data]'") from None
    try:
        ds = datasets.load_dataset(repo, config, split=split or "test")
    except Exception as e:
        raise UserError(
            f"{field}: hub dataset {name!r} could not be loaded ({type(e).__name__}); "
            "without network, point the recipe at a local copy of the text"
        ) from None
    return "\n\n".join(ds[column])


def load_corpus(spec: DatasetSpec, base_dir: Path, field: str) -> Corpus:
    """Read a corpus; `field` is the recipe path used in error messages (e.g. 'eval.dataset')."""
    src = spec.source
    if src.startswith("builtin:"):
        name = src.removeprefix("builtin:")
        if name != "pydoc":
            raise UserError(f"{field}.source: unknown builtin corpus {name!r}; available: builtin:pydoc")
        text = _pydoc_text(spec.split, field)
        label = f"builtin:pydoc[{spec.split or 'all'}]"
    elif src in HUB_DATASETS and not (base_dir / src).exists():
        text = _read_hub(src, spec.split, field)
        label = f"{src}[{spec.split or 'test'}]"
    else:
        path = Path(src).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise UserError(f"{field}.source: {path} not found (a file, builtin:pydoc, or one of {', '.join(HUB_DATASETS)})")
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            text = _read_jsonl(path, spec.field, field)
        elif suffix == ".parquet":
            text = _read_parquet(path, spec.field, field)
        else:
            text = _read_text_file(path, field)
        label = path.name
    if not text.strip():
        raise UserError(f"{field}: corpus {label} is empty")
    return Corpus(text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), label=label)


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one [1, N] stream (special tokens as the tokenizer adds them, like the
    GPTQ reference's single tokenizer call)."""
    return tokenizer(text, return_tensors="pt").input_ids.to(torch.long)


def cached_tokens(cache_dir: Path, key_obj: dict, tokenizer: Any, text: str) -> torch.Tensor:
    """Tokenise once; reuse the run directory's cached stream when the key matches."""
    key = content_hash(key_obj)
    path = cache_dir / f"tokens-{key}.safetensors"
    if path.exists():
        try:
            return load_file(str(path))["input_ids"]
        except Exception:
            log.warning("cached tokens %s unreadable; tokenising again", path)
    ids = tokenize(tokenizer, text)
    atomic_write_bytes(path, save({"input_ids": ids.contiguous()}))
    return ids


def eval_windows_available(n_tokens: int, seqlen: int) -> int:
    return n_tokens // seqlen


def check_eval_length(ids: torch.Tensor, seqlen: int, label: str) -> None:
    n = ids.shape[1]
    if n < seqlen:
        raise UserError(
            f"eval.dataset: {label} has {n} tokens, fewer than one window of eval.seqlen={seqlen}; "
            "use a longer corpus or a smaller seqlen"
        )


def calibration_crops(ids: torch.Tensor, n_samples: int, seqlen: int, seed: int, label: str = "corpus") -> torch.Tensor:
    """[n_samples, seqlen] random crops, start drawn uniformly (GPTQ reference sampler)."""
    n = ids.shape[1]
    if n <= seqlen:
        raise UserError(
            f"calibration.dataset: {label} has {n} tokens, not more than calibration.seqlen={seqlen}; "
            "use a longer corpus or a smaller seqlen"
        )
    rng = random.Random(seed)
    rows = []
    for _ in range(n_samples):
        i = rng.randint(0, n - seqlen - 1)
        rows.append(ids[0, i:i + seqlen])
    if n_samples < MIN_CALIBRATION_SAMPLES:
        log.warning("calibration uses %d samples; the papers use 128 (under %d is often noisy)",
                    n_samples, MIN_CALIBRATION_SAMPLES)
    return torch.stack(rows)
