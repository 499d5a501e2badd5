"""The baseline's reference file (eval/fidelity.py) and the two observers of perplexity's logits:
`ReferenceWriter` (the baseline: keeps its top-k, written once per protocol) and `FidelityObserver`
(a variant: compared position by position with the reference, keeping one KL scalar each).

The file is safetensors: ids [P, k] int32, logp [P, k] float32, logp_rest [P] float32, so it
holds P * (8k + 4) bytes (k = 64: 516 bytes a position; 64 windows x 512: ~17 MB, 147 x 2048:
~155 MB). Position p is window p // (seqlen - 1), scored token p % (seqlen - 1). It is written
atomically: a file that exists is complete.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..runs import atomic_write_bytes
from .fidelity import TOP_K, FidelityAccumulator, Reference, reference_from_logits


def reference_bytes(positions: int, top_k: int = TOP_K) -> int:
    """Size of the tensors of a reference file (its small header aside)."""
    return positions * (top_k * 8 + 4)


def reference_name(protocol_key: str, model_hash: str, top_k: int = TOP_K) -> str:
    return f"fidelity-ref-{protocol_key}-{model_hash[:16]}-k{top_k}.safetensors"


class ReferenceWriter:
    """Observer of the baseline's scored logits: collects their top-k, then `save`s them."""

    def __init__(self, seqlen: int, top_k: int = TOP_K):
        self.seqlen, self.top_k = seqlen, top_k
        self._parts: list[Reference] = []
        self._next = 0

    def __call__(self, window: int, start: int, logits: Tensor) -> None:
        pos = window * (self.seqlen - 1) + start
        if pos != self._next:
            raise RuntimeError(f"reference positions out of order: got {pos}, expected {self._next}")
        ref = reference_from_logits(logits, self.top_k)
        self._parts.append(Reference(ref.ids.cpu(), ref.logp.cpu(), ref.logp_rest.cpu()))
        self._next += logits.shape[0]

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        tensors = {"ids": torch.cat([r.ids for r in self._parts]).contiguous(),
                   "logp": torch.cat([r.logp for r in self._parts]).contiguous(),
                   "logp_rest": torch.cat([r.logp_rest for r in self._parts]).contiguous()}
        self._parts = []
        meta = {"top_k": str(self.top_k), "seqlen": str(self.seqlen), "positions": str(tensors["ids"].shape[0])}
        atomic_write_bytes(Path(path), save(tensors, metadata=meta))


def read_reference(path: Path, start: int = 0, stop: int | None = None) -> Reference:
    """Positions start..stop of a reference file (all by default)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return Reference(*(f.get_slice(k)[start:stop] for k in ("ids", "logp", "logp_rest")))


class FidelityObserver:
    """Observer of a variant's scored logits: compares each chunk with the reference's positions."""

    def __init__(self, path: Path, seqlen: int, positions: int):
        from safetensors import safe_open

        self.path, self.seqlen = Path(path), seqlen
        if not self.path.is_file():
            raise UserError(f"{path}: the baseline's fidelity reference is missing; rerun to evaluate the baseline again")
        self._file = safe_open(str(self.path), framework="pt")
        meta = self._file.metadata() or {}
        have = int(meta.get("positions", -1))
        if int(meta.get("seqlen", -1)) != seqlen or have < positions:
            raise UserError(f"{path}: the fidelity reference holds {have} positions of windows of "
                            f"{meta.get('seqlen')} tokens, this evaluation scores {positions} of {seqlen}; "
                            "rerun to evaluate the baseline again")
        self.acc = FidelityAccumulator(int(meta["top_k"]))

    def __call__(self, window: int, start: int, logits: Tensor) -> None:
        pos = window * (self.seqlen - 1) + start
        stop = pos + logits.shape[0]
        ref = Reference(*(self._file.get_slice(k)[pos:stop].to(logits.device) for k in ("ids", "logp", "logp_rest")))
        self.acc.add(ref, logits)

    def result(self) -> dict:
        return self.acc.result()
