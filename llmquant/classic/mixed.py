"""Mixed precision: INT8 everywhere except chosen layers and/or the layers whose quantization
hurts most, which stay in float.

The sensitivity pass quantizes one layer at a time (static: only that layer annotated; dynamic:
only that Linear) and scores the damage on the calibration split: the relative output error
against the float model's logits, or the accuracy drop in points. Layers are ranked by it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..progress import NULL_PROGRESS, Progress
from .data import Dataset, Splits
from .export import example_inputs, save_program
from .ptq import (
    DYNAMIC_KINDS,
    STATIC_KINDS,
    ClassicContext,
    dynamic_model,
    int8_tensors,
    layer_names,
    matching,
    static_convert,
)
from .validate import accuracy_pct


def output_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """||logits - reference||² / ||reference||²."""
    ref = reference.double()
    return float(((logits.double() - ref) ** 2).sum() / (ref ** 2).sum().clamp_min(1e-30))


def accuracy_drop(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> float:
    """Points of accuracy lost against the float model on the same samples."""
    y = labels.numpy()
    return accuracy_pct(reference.numpy(), y) - accuracy_pct(logits.numpy(), y)


def _logits(module: nn.Module, data: Dataset) -> torch.Tensor:
    with torch.no_grad():
        return module(*data.inputs).float()


def layer_sensitivity(module: nn.Module, calib: Dataset, base: str, metric: str,
                      progress: Progress = NULL_PROGRESS) -> list[dict]:
    """[{"layer", "score"}] for every candidate layer, most sensitive first."""
    names = layer_names(module, STATIC_KINDS if base == "static" else DYNAMIC_KINDS)
    ref = _logits(module, calib)
    scores = []
    with progress.task(f"sensitivity ({len(names)} layers, {base})", total=len(names)) as advance:
        for name in names:
            q = static_convert(module, calib, only=[name]) if base == "static" else dynamic_model(module, only=[name])
            out = _logits(q, calib)
            score = output_error(out, ref) if metric == "output_error" else accuracy_drop(out, ref, calib.labels)
            scores.append({"layer": name, "score": score})
            advance(1, note=name)
    return sorted(scores, key=lambda s: -s["score"] if np.isfinite(s["score"]) else -np.inf)


def mixed(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    kinds = STATIC_KINDS if variant.base == "static" else DYNAMIC_KINDS
    names = layer_names(source.module, kinds)
    keep = matching(names, variant.keep_float)
    ranking: list[dict] = []
    if variant.keep_most_sensitive:
        ranking = layer_sensitivity(source.module, splits.calibration, variant.base, variant.sensitivity, ctx.progress)
        for r in ranking[:variant.keep_most_sensitive]:
            if r["layer"] not in keep:
                keep.append(r["layer"])
    if variant.base == "static":
        m = static_convert(source.module, splits.calibration, keep)
        extra = {"int8_weight_tensors": int8_tensors(m)}
    else:
        m = dynamic_model(source.module, keep)
        extra = {}
    save_program(m, example_inputs(splits.calibration.inputs), out / "model.pt2")
    return {"artifact": "model.pt2", "format": "pt2", "quantized": [n for n in names if n not in keep],
            "float": keep, "sensitivity": ranking, **extra,
            "config": {"base": variant.base, "metric": variant.sensitivity,
                       "keep_most_sensitive": variant.keep_most_sensitive, "keep_float": variant.keep_float}}
