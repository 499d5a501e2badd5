"""Safetensors shards written as tensors arrive, never holding more than one tensor in memory.

    shards = StreamedShards(out_dir, max_shard=4 << 30)
    shards.add("model.layers.0.mlp.down_proj.qweight", t)   # appended to the open shard's body
    ...
    shards.finish()   # -> ["model.safetensors"] or ["model-00001-of-0000N.safetensors", ...] + index

Each shard's tensors are appended to a body file as they come; when the shard is full (same
rule as `checkpoint.write_safetensors`: a tensor that would push a non-empty shard past
`max_shard` starts the next one) the final file is written from the body: the header, then
each tensor's bytes copied in the order safetensors itself lays them out (dtype, largest
first, then name), so a shard holding the same tensors is byte-identical to
`safetensors.torch.save_file`'s. One shard is named model.safetensors with no index, as
`write_safetensors` does.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..runs import atomic_write_json

MAX_SHARD_BYTES = 4 << 30
COPY_CHUNK = 64 << 20

# safetensors' dtype names, in the order of its Rust enum (data is laid out by it, descending)
DTYPE_ORDER = ("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16",
               "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64")
DTYPE_NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
               torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64",
               torch.int64: "I64"}


@dataclass
class _Entry:
    dtype: str
    shape: list[int]
    start: int  # offset in the body file
    nbytes: int


@dataclass
class _Shard:
    body: Path
    entries: dict[str, _Entry] = field(default_factory=dict)
    size: int = 0


def layout(entries: dict[str, tuple[str, int]]) -> list[str]:
    """Names in the order safetensors stores them: by dtype (largest enum first), then name."""
    return sorted(entries, key=lambda n: (-DTYPE_ORDER.index(entries[n][0]), n))


def header_bytes(entries: dict[str, tuple[str, list[int], int]], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length and the JSON header of a safetensors file holding `entries`
    (name -> (dtype, shape, nbytes)), padded with spaces to a multiple of 8 like safetensors."""
    head: dict = {}
    if metadata:
        head["__metadata__"] = metadata
    offset = 0
    for name in layout({n: (e[0], e[2]) for n, e in entries.items()}):
        dtype, shape, nbytes = entries[name]
        head[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text


def tensor_bytes(t: Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.dtype not in DTYPE_NAMES:
        raise ValueError(f"cannot write a {t.dtype} tensor to safetensors here")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


class StreamedShards:
    def __init__(self, out_dir: Path, max_shard: int = MAX_SHARD_BYTES, metadata: dict[str, str] | None = None):
        self.out_dir, self.max_shard = Path(out_dir), max_shard
        self.metadata = {"format": "pt"} if metadata is None else metadata
        self._made_dir = not self.out_dir.exists()  # created on the first tensor; removed by abort()
        self.closed: list[tuple[Path, list[str], int]] = []  # (written file, names, bytes)
        self.names: set[str] = set()
        self._shard: _Shard | None = None
        self._fh = None

    def add(self, name: str, t: Tensor) -> None:
        if name in self.names:
            raise ValueError(f"{name} written twice")
        data = tensor_bytes(t)
        nbytes = data.nbytes
        if self._shard is not None and self._shard.entries and self._shard.size + nbytes > self.max_shard:
            self._close()
        if self._shard is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            body = self.out_dir / f".shard-{len(self.closed) + 1:05d}.body"
            self._shard, self._fh = _Shard(body), open(body, "wb")
        self._fh.write(data)
        self._shard.entries[name] = _Entry(DTYPE_NAMES[t.dtype], list(t.shape), self._shard.size, nbytes)
        self._shard.size += nbytes
        self.names.add(name)

    def _close(self) -> None:
        shard, fh = self._shard, self._fh
        fh.close()
        self._shard = self._fh = None
        target = self.out_dir / f".shard-{len(self.closed) + 1:05d}.safetensors"
        entries = {n: (e.dtype, e.shape, e.nbytes) for n, e in shard.entries.items()}
        with open(shard.body, "rb") as src, open(target, "wb") as dst:
            dst.write(header_bytes(entries, self.metadata))
            for name in layout({n: (e[0], e[2]) for n, e in entries.items()}):
                e = shard.entries[name]
                src.seek(e.start)
                left = e.nbytes
                while left:
                    chunk = src.read(min(COPY_CHUNK, left))
                    if not chunk:
                        raise OSError(f"{shard.body}: shorter than written")
                    dst.write(chunk)
                    left -= len(chunk)
        shard.body.unlink()
        self.closed.append((target, list(shard.entries), shard.size))

    def finish(self) -> list[str]:
        """Close the last shard, give the files their final names; the index when there are several."""
        if self._shard is not None:
            self._close()
        if not self.closed:  # an empty checkpoint is still a valid file
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._shard, self._fh = _Shard(self.out_dir / ".shard-00001.body"), open(self.out_dir / ".shard-00001.body", "wb")
            self._close()
        n = len(self.closed)
        if n == 1:
            names = ["model.safetensors"]
        else:
            names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for (path, tensors, _), final in zip(self.closed, names):
            os.replace(path, self.out_dir / final)
            weight_map.update({k: final for k in tensors})
        if n > 1:
            total = sum(size for _, _, size in self.closed)
            atomic_write_json(self.out_dir / "model.safetensors.index.json",
                              {"metadata": {"total_size": total}, "weight_map": weight_map})
        return names

    def abort(self) -> None:
        """Remove what was written (body and shard files; the directory if this writer made it)."""
        if self._fh is not None:
            self._fh.close()
            self._shard.body.unlink(missing_ok=True)
            self._shard = self._fh = None
        for path, _, _ in self.closed:
            path.unlink(missing_ok=True)
        self.closed = []
        if self._made_dir and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()
