"""Model sources for the classic path: an HF sequence-classification directory, a
`module:factory` entry point plus a state_dict, or an ONNX file.

State dicts are read with `torch.load(weights_only=True)` (or safetensors) and must be a flat
mapping of names to tensors; pickled objects, whole modules and nested checkpoints are refused.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..runs import content_hash, file_fingerprint
from .recipe import ClassicModelSpec


class HFClassifier(nn.Module):
    """An HF sequence classifier as (input_ids, attention_mask) → logits, so export, ONNX and
    the runners see plain tensors in and out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@dataclass
class SourceModel:
    kind: str  # hf | factory | onnx
    label: str
    module: nn.Module | None  # fp32, eval mode (None for onnx)
    onnx_path: Path | None
    tokenizer: Any
    label2id: dict[str, int] | None
    hash: str  # identity of the weights (for factory + train: filled in after training)


def _resolve(base_dir: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base_dir / path


def import_factory(entry: str, base_dir: Path) -> Any:
    """`package.module:function`; the recipe's directory is importable while it is imported."""
    mod_name, _, attr = entry.partition(":")
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"model.factory: cannot import {mod_name!r} ({e})") from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise UserError(f"model.factory: {mod_name} has no callable {attr!r}")
    return fn


def build_factory(entry: str, kwargs: dict, base_dir: Path) -> nn.Module:
    fn = import_factory(entry, base_dir)
    try:
        module = fn(**kwargs)
    except TypeError as e:
        raise UserError(f"model.kwargs: {entry} refused {kwargs} ({e})") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"model.factory: {entry} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"model.weights: {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"model.weights: {path}: not a readable safetensors file ({e})") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for non-zip files
        raise UserError(f"model.weights: {path}: refused: only a plain state_dict loads with weights_only=True "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        kind = type(sd).__name__ if not isinstance(sd, dict) else "a dict holding non-tensors (a checkpoint?)"
        raise UserError(f"model.weights: {path}: refused: expected a state_dict (names → tensors), got {kind}; "
                        "save model.state_dict()")
    return sd


def load_weights(module: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise UserError(f"{where}: does not fit the factory's model: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}, shape mismatches {shapes[:3]}")
    module.load_state_dict(sd)


def _hf_hash(d: Path) -> str:
    files = sorted(f for f in d.iterdir() if f.suffix in (".safetensors", ".bin") or f.name == "config.json")
    return content_hash({f.name: file_fingerprint(f) for f in files}, length=24)


def load_tokenizer(path: Path, where: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: {path}: no usable tokenizer ({str(e).splitlines()[0][:160]})") from None


def open_source(spec: ClassicModelSpec, base_dir: Path) -> SourceModel:
    """Load the model named by the recipe (a factory model with `train` comes back untrained)."""
    tokenizer = load_tokenizer(_resolve(base_dir, spec.tokenizer), "model.tokenizer") if spec.tokenizer else None
    if spec.hf:
        from transformers import AutoModelForSequenceClassification

        d = _resolve(base_dir, spec.hf)
        if not (d / "config.json").is_file():
            raise UserError(f"model.hf: {d} is not an HF model directory (no config.json)")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(d), dtype=torch.float32)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"model.hf: {d}: cannot load a sequence-classification model "
                            f"({str(e).splitlines()[0][:200]})") from None
        label2id = {str(k): int(v) for k, v in (getattr(model.config, "label2id", None) or {}).items()}
        tok = tokenizer or load_tokenizer(d, "model.hf")
        return SourceModel("hf", d.name, HFClassifier(model).eval(), None, tok, label2id or None, _hf_hash(d))
    if spec.onnx:
        p = _resolve(base_dir, spec.onnx)
        if not p.is_file():
            raise UserError(f"model.onnx: {p} not found")
        return SourceModel("onnx", p.name, None, p, tokenizer, None, file_fingerprint(p))
    if spec.train:  # a fresh model: its initial weights come from the recipe's seed
        with torch.random.fork_rng():
            torch.manual_seed(spec.train.seed)
            module = build_factory(spec.factory, spec.kwargs, base_dir)
    else:
        module = build_factory(spec.factory, spec.kwargs, base_dir)
    label = spec.factory.split(":")[1]
    if spec.weights:
        wpath = _resolve(base_dir, spec.weights)
        load_weights(module, read_state_dict(wpath), f"model.weights: {wpath}")
        h = content_hash({"factory": spec.factory, "kwargs": spec.kwargs, "weights": file_fingerprint(wpath)}, 24)
        label = f"{label} ({wpath.name})"
    else:
        h = ""  # set after training (it depends on the training split)
    return SourceModel("factory", label, module.eval(), None, tokenizer, None, h)
