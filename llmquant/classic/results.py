"""What one validated classic variant records, the protocol that makes two results comparable,
and its leaderboard row (the generic metric columns of `llmquant.board`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..runs import content_hash


@dataclass(frozen=True)
class ClassicProtocol:
    """Results are ranked together only when their keys are equal (never with perplexity rows)."""

    name: str  # "classic-accuracy"
    dataset: str  # label, for people
    validation_sha256: str  # the validation split's inputs and labels
    validation_n: int
    metric: str  # "accuracy"
    batch: int  # accuracy and throughput batch
    latency: str  # how latency was measured
    runtime: str  # "torch.compile (inductor, freezing)" or "eager"; ONNX variants run in ONNX Runtime
    threads: int
    device: str

    @property
    def key(self) -> str:
        d = asdict(self)
        d.pop("dataset")
        return content_hash(d)

    def describe(self) -> str:
        return (f"{self.name}: {self.metric} on {self.validation_n} held-out samples of {self.dataset}; batch-1 "
                f"latency {self.latency}; throughput at batch {self.batch}; torch variants {self.runtime}; "
                f"{self.threads} threads on {self.device}")


@dataclass(frozen=True)
class ClassicResult:
    metric_name: str
    metric: float  # accuracy, percent
    n: int
    nonfinite: int
    latency_ms_median: float | None
    latency_ms_p90: float | None
    throughput: float | None
    throughput_batch: int
    size_bytes: int  # the saved artifact on disk
    weights_bytes: int  # tensors inside it
    format: str  # pt2 | onnx
    protocol: ClassicProtocol
    seconds: dict = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassicResult":
        d = dict(d)
        d["protocol"] = ClassicProtocol(**d["protocol"])
        return cls(**d)


def classic_row(*, run: str, run_dir: str, model: str, model_hash: str, variant: str, method: str, bits: int | None,
                is_baseline: bool, result: ClassicResult, baseline: ClassicResult, verdict: str, artifact: str,
                artifact_hash: str) -> dict:
    from .. import __version__

    return {
        "run": run, "run_dir": run_dir, "model": model, "model_hash": model_hash, "variant": variant,
        "method": method, "bits": bits, "group_size": None,
        "format": result.format, "is_baseline": int(is_baseline), "size_bytes": result.size_bytes,
        "weights_bytes": result.weights_bytes, "ppl": None, "delta_ppl_pct": None,
        "metric_name": result.metric_name, "metric": result.metric,
        "delta_metric_pts": result.metric - baseline.metric, "latency_ms_median": result.latency_ms_median,
        "latency_ms_p90": result.latency_ms_p90, "throughput": result.throughput, "verdict": verdict,
        "protocol_key": result.protocol.key, "protocol": result.protocol.describe(), "version": __version__,
        "artifact": artifact, "artifact_hash": artifact_hash,
        "result_json": json.dumps(result.to_dict(), sort_keys=True, default=str),
    }
