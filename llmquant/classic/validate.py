"""Validation of one saved variant, the same for every variant (baseline included): accuracy on
the validation split, NaN/Inf check on the outputs, batch-1 latency (median and p90 after
warm-up) and throughput at the validation batch size. Plus the verdict rule users know."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from .data import Dataset
from .runners import Runner

VERDICT_RULE = "accuracy loss < 1 pt excellent, 1-2 acceptable, 2-3 try QAT, > 3 reconsider"


def verdict(loss_pts: float | None, nonfinite: int = 0) -> str:
    """The rule of thumb on accuracy loss in points (baseline minus variant)."""
    if nonfinite:
        return "broken (NaN/Inf outputs)"
    if loss_pts is None:
        return "baseline"
    if loss_pts < 1.0:
        return "excellent"
    if loss_pts <= 2.0:
        return "acceptable"
    if loss_pts <= 3.0:
        return "try QAT"
    return "reconsider"


def accuracy_pct(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)


@dataclass(frozen=True)
class Measurement:
    accuracy: float  # percent on the validation split
    n: int
    nonfinite: int  # NaN/Inf values among the validation logits
    latency_ms_median: float | None
    latency_ms_p90: float | None
    throughput: float | None  # samples/s at throughput_batch
    throughput_batch: int
    seconds: dict = field(default_factory=dict)


def _padded(data: Dataset, start: int, batch: int) -> tuple[torch.Tensor, ...]:
    """Rows start..start+batch, wrapping around: every call has the same shape (one compile)."""
    idx = torch.arange(start, start + batch) % len(data)
    return tuple(x[idx] for x in data.inputs)


def predict(runner: Runner, data: Dataset, batch: int) -> np.ndarray:
    outs = []
    for start in range(0, len(data), batch):
        k = min(batch, len(data) - start)
        outs.append(runner.logits(runner(runner.prepare(_padded(data, start, batch))))[:k])
    return np.concatenate(outs)


def time_calls(runner: Runner, native, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        runner(native)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner(native)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(runner: Runner, data: Dataset, batch: int, warmup: int, repeats: int, latency: bool = True) -> Measurement:
    secs = {}
    one = runner.prepare(_padded(data, 0, 1))
    t = time.perf_counter()
    runner(one)  # first call: compiles where the runner compiles
    secs["first_call"] = time.perf_counter() - t
    t = time.perf_counter()
    logits = predict(runner, data, batch)
    secs["accuracy"] = time.perf_counter() - t
    if logits.ndim != 2 or logits.shape[1] < data.num_classes:
        raise UserError(f"the model returns outputs of shape {tuple(logits.shape)}, but the data has "
                        f"{data.num_classes} classes: expected [batch, >= {data.num_classes}] logits")
    nonfinite = int((~np.isfinite(logits)).sum())
    acc = accuracy_pct(np.nan_to_num(logits, nan=-np.inf), data.labels.numpy())
    med = p90 = thr = None
    if latency:
        t = time.perf_counter()
        lat = time_calls(runner, one, warmup, repeats)
        med, p90 = percentile(lat, 50), percentile(lat, 90)
        big = runner.prepare(_padded(data, 0, batch))
        tb = time_calls(runner, big, min(warmup, 3), max(5, repeats // 10))
        thr = batch / (percentile(tb, 50) / 1e3)
        secs["latency"] = time.perf_counter() - t
    return Measurement(acc, len(data), nonfinite, med, p90, thr, batch, secs)
