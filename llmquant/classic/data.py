"""Labelled datasets for the classic path, and their seeded splits.

A `Dataset` holds model inputs as a tuple of tensors (images: one float tensor [N, C, H, W];
text: input_ids and attention_mask [N, L]) and integer labels. Sources: `.npz` with x/y arrays,
MNIST idx files (`.gz` or raw), `.jsonl` with a text and a label field, and `builtin:digits`
(scikit-learn's bundled 8x8 digits; no download).

Splits: a seeded permutation holds out the validation split; the rest is the training split
(used by QAT and by `model.train`); the calibration split is drawn from the training split, so
no validation sample is ever seen while quantizing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .recipe import ClassicDataSpec


@dataclass(frozen=True)
class Dataset:
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    labels: torch.Tensor  # int64 [N]
    num_classes: int
    label: str  # for people: where it came from
    sha256: str  # content of inputs and labels
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, idx: torch.Tensor) -> "Dataset":
        return Dataset(tuple(x[idx] for x in self.inputs), self.input_names, self.labels[idx], self.num_classes,
                       self.label, _hash_tensors((*[x[idx] for x in self.inputs], self.labels[idx])),
                       self.class_names)

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return tuple(x[start:stop] for x in self.inputs)


@dataclass(frozen=True)
class Splits:
    train: Dataset
    validation: Dataset
    calibration: Dataset
    report: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return hashlib.sha256("|".join((self.train.sha256, self.validation.sha256,
                                        self.calibration.sha256)).encode()).hexdigest()[:16]


def _hash_tensors(ts: tuple[torch.Tensor, ...]) -> str:
    h = hashlib.sha256()
    for t in ts:
        t = t.contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


# -- readers -------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format; gzip or raw): magic 0x00000800 | dtype code << 8 | ndim."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise UserError(f"{path}: not an unsigned-byte idx file (magic {head.hex()})")
            ndim = head[3]
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as e:
        raise UserError(f"{path}: cannot read idx file ({e})") from None
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: idx header says {dims} but the file holds {data.size} values (truncated?)")
    return data.reshape(dims)


def _images_to_tensor(x: np.ndarray, where: str) -> torch.Tensor:
    """uint8 → [0, 1]; [N,H,W] → [N,1,H,W]; NHWC (last dim 1 or 3, second dim not) → NCHW."""
    if x.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # tabular features
    if x.ndim not in (3, 4):
        raise UserError(f"{where}: images must be [N,H,W], [N,C,H,W] or [N,H,W,C], got shape {x.shape}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / scale
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()
    return t


def _labels_to_tensor(y: Any, where: str, label2id: dict[str, int] | None = None) -> tuple[torch.Tensor, tuple[str, ...]]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise UserError(f"{where}: labels must be one per sample (1-D), got shape {y.shape}")
    if y.dtype.kind in "iu":
        if y.size and y.min() < 0:
            raise UserError(f"{where}: labels must be >= 0, got {int(y.min())}")
        return torch.from_numpy(y.astype(np.int64)), ()
    if y.dtype.kind in "US" or y.dtype == object:
        names = [str(v) for v in y]
        if label2id and all(n in label2id for n in names):
            mapping = dict(label2id)
        else:
            mapping = {n: i for i, n in enumerate(sorted(set(names)))}
        classes = tuple(sorted(mapping, key=mapping.get))
        return torch.tensor([mapping[n] for n in names], dtype=torch.int64), classes
    raise UserError(f"{where}: labels must be integers or strings, got {y.dtype}")


def _normalize(x: torch.Tensor, spec: ClassicDataSpec, where: str) -> torch.Tensor:
    if spec.mean is None or x.ndim != 4:
        return x
    c = x.shape[1]
    if len(spec.mean) not in (1, c):
        raise UserError(f"{where}: mean/std have {len(spec.mean)} values but the images have {c} channels")
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _read_jsonl(path: Path, spec: ClassicDataSpec) -> tuple[list[str], list[Any]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {n}: not JSON ({e.msg})") from None
            for k in (spec.text_field, spec.label_field):
                if not isinstance(row, dict) or k not in row:
                    raise UserError(f"{path}: line {n}: no field {k!r} (set data.text_field / data.label_field)")
            texts.append(str(row[spec.text_field]))
            labels.append(row[spec.label_field])
    if not texts:
        raise UserError(f"{path}: no samples")
    return texts, labels


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


def load_dataset(spec: ClassicDataSpec, base_dir: Path, tokenizer: Any = None,
                 label2id: dict[str, int] | None = None) -> Dataset:
    """Read the recipe's data section into a Dataset (nothing is copied or cached on disk)."""
    src = spec.source
    if src.startswith("builtin:"):
        if src not in ("builtin:digits",):
            raise UserError(f"data.source: {src!r} is not a builtin dataset; allowed: builtin:digits")
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
        y, names = torch.from_numpy(d.target.astype(np.int64)), ()
        inputs, input_names, label = (x,), ("x",), "builtin:digits (scikit-learn, 8x8)"
    else:
        path = Path(src).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise UserError(f"data.source: {path} not found")
        name = path.name
        if name.endswith(".npz"):
            try:
                arrays = np.load(path, allow_pickle=False)
                for k in (spec.x_key, spec.y_key):
                    if k not in arrays.files:
                        raise UserError(f"data.source: {path} has no array {k!r} (arrays: {', '.join(arrays.files)}; "
                                        "set data.x_key / data.y_key)")
                x_np, y_np = arrays[spec.x_key], arrays[spec.y_key]
            except (OSError, ValueError) as e:
                raise UserError(f"data.source: {path}: not a readable .npz ({e})") from None
            x = _normalize(_images_to_tensor(x_np, f"data.source: {path}"), spec, f"data: {path}")
            y, names = _labels_to_tensor(y_np, f"data.source: {path} [{spec.y_key}]", label2id)
            inputs, input_names = (x,), ("x",)
        elif "idx" in name and "ubyte" in name:
            if not spec.labels:
                raise UserError(f"data.labels: required with an idx images file ({name}); give the idx labels file")
            lpath = Path(spec.labels).expanduser()
            lpath = lpath if lpath.is_absolute() else base_dir / lpath
            if not lpath.is_file():
                raise UserError(f"data.labels: {lpath} not found")
            x = _normalize(_images_to_tensor(read_idx(path), f"data.source: {path}"), spec, f"data: {path}")
            y, names = _labels_to_tensor(read_idx(lpath), f"data.labels: {lpath}")
            inputs, input_names = (x,), ("x",)
        elif name.endswith(".jsonl"):
            if tokenizer is None:
                raise UserError("model.tokenizer: text data needs a tokenizer (an hf model or model.tokenizer)")
            texts, raw = _read_jsonl(path, spec)
            y, names = _labels_to_tensor(np.array(raw), f"data.source: {path} [{spec.label_field}]", label2id)
            ids, mask = tokenize(tokenizer, texts, spec.max_length)
            inputs, input_names = (ids, mask), ("input_ids", "attention_mask")
        else:
            raise UserError(f"data.source: {path}: unknown format; use .npz (x/y arrays), MNIST idx files "
                            "(*-idx3-ubyte[.gz] with data.labels), .jsonl (text/label) or builtin:digits")
        label = str(path)
    if len(y) != len(inputs[0]):
        raise UserError(f"data: {len(inputs[0])} samples but {len(y)} labels")
    if spec.limit:
        inputs, y = tuple(t[:spec.limit] for t in inputs), y[:spec.limit]
    num_classes = max(int(y.max()) + 1 if len(y) else 0, len(names))
    if num_classes < 2:
        raise UserError(f"data: {label} has fewer than 2 classes")
    return Dataset(inputs, input_names, y, num_classes, label, _hash_tensors((*inputs, y)), names)


# -- splits --------------------------------------------------------------------------------------


def class_coverage(labels: torch.Tensor, num_classes: int) -> dict:
    counts = torch.bincount(labels, minlength=num_classes)
    return {"classes": num_classes, "present": int((counts > 0).sum()), "min_per_class": int(counts.min()),
            "max_per_class": int(counts.max()), "missing": [i for i, c in enumerate(counts.tolist()) if c == 0]}


def make_splits(ds: Dataset, validation: float, calibration: int, seed: int) -> Splits:
    """Seeded: validation held out; calibration drawn from the rest (the training split)."""
    n = len(ds)
    n_val = int(validation) if validation >= 1 else int(round(n * validation))
    if n_val < 1 or n_val >= n:
        raise UserError(f"data.validation: {validation} leaves {n_val} of {n} samples for validation; "
                        "need at least 1 and fewer than all")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:]
    n_cal = min(calibration, len(train_idx))
    cal_idx = train_idx[torch.randperm(len(train_idx), generator=g)[:n_cal]].sort().values
    train = ds.subset(train_idx.sort().values)
    val, cal = ds.subset(val_idx), ds.subset(cal_idx)
    report = {
        "samples": n, "train": len(train), "validation": len(val), "calibration": len(cal), "seed": seed,
        "calibration_requested": calibration,
        "calibration_coverage": class_coverage(cal.labels, ds.num_classes),
        "validation_coverage": class_coverage(val.labels, ds.num_classes),
    }
    return Splits(train, val, cal, report)


def coverage_notes(report: dict) -> list[str]:
    """Human notes on the splits (shown as progress messages)."""
    c = report["calibration_coverage"]
    notes = [f"splits: train {report['train']}, validation {report['validation']}, calibration "
             f"{report['calibration']} (seed {report['seed']}); calibration covers {c['present']}/{c['classes']} "
             f"classes ({c['min_per_class']}-{c['max_per_class']} per class)"]
    if report["calibration"] < report["calibration_requested"]:
        notes.append(f"calibration: only {report['calibration']} training samples available "
                     f"(asked for {report['calibration_requested']})")
    if c["missing"]:
        notes.append(f"calibration: classes {c['missing']} are absent; ranges may not cover them")
    return notes
