"""Checks of a classic recipe that need no weights loaded and no data read: files exist, the
factory imports, the HF directory is a sequence classifier. `llmquant validate` runs them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .models import import_factory
from .recipe import BUILTIN_DATA, ClassicRecipe


@dataclass
class ClassicPreflight:
    model: str
    data: str
    notes: list[str] = field(default_factory=list)


def _exists(recipe: ClassicRecipe, p: str, where: str, is_dir: bool = False) -> Path:
    path = recipe.resolve(p)
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        raise UserError(f"{where}: {path} not found" + (" (a directory)" if is_dir else ""))
    return path


def preflight_classic(recipe: ClassicRecipe) -> ClassicPreflight:
    m, d = recipe.model, recipe.data
    notes: list[str] = []
    if m.hf:
        path = _exists(recipe, m.hf, "model.hf", is_dir=True)
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            raise UserError(f"model.hf: {path} has no readable config.json") from None
        archs = cfg.get("architectures") or []
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            notes.append(f"model.hf: architectures {archs} is not a *ForSequenceClassification; a fresh head "
                         "would be initialised at random")
        model = f"{path.name} (HF directory)"
    elif m.onnx:
        model = f"{_exists(recipe, m.onnx, 'model.onnx').name} (ONNX)"
    else:
        import_factory(m.factory, recipe.base_dir)
        if m.weights:
            model = f"{m.factory} + {_exists(recipe, m.weights, 'model.weights').name}"
        else:
            model = f"{m.factory} (trained here: {m.train.epochs} epochs)"
    if m.tokenizer:
        _exists(recipe, m.tokenizer, "model.tokenizer", is_dir=True)
    if d.source.startswith("builtin:"):
        if d.source not in BUILTIN_DATA:
            raise UserError(f"data.source: {d.source!r} is not a builtin dataset; allowed: {', '.join(BUILTIN_DATA)}")
        data = d.source
    else:
        data = str(_exists(recipe, d.source, "data.source"))
        if d.labels:
            _exists(recipe, d.labels, "data.labels")
    return ClassicPreflight(model, data, notes)
