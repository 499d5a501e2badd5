"""Run a saved variant: a torch.export program (optionally through torch.compile) or an ONNX
file in ONNX Runtime. Validation only sees this interface, so every variant is measured the same
way: `prepare` converts a batch to the runner's native inputs outside any timing, `__call__` runs
it, `logits` turns the output into a float32 array."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import UserError


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: str  # "pt2" | "onnx"

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class Runner(Protocol):
    def prepare(self, inputs: tuple[torch.Tensor, ...]) -> Any: ...

    def __call__(self, native: Any) -> Any: ...

    def logits(self, out: Any) -> np.ndarray: ...


class TorchRunner:
    """`compile=True`: torch.compile with inductor freezing (constant weights folded and packed,
    which is what turns pt2e's quantize/dequantize pairs into INT8 kernels), one static shape per
    batch size."""

    def __init__(self, module: torch.nn.Module, compile: bool):
        self.module = module
        self.compile = compile
        self.fn = torch.compile(module, dynamic=False) if compile else module
        self._compiled: set[tuple] = set()

    def prepare(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(x.contiguous() for x in inputs)

    def __call__(self, native: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            shapes = tuple(x.shape for x in native)
            if self.compile and shapes not in self._compiled:
                # compilation happens on the first call of each shape. Freezing must be on in the
                # process-wide inductor config while it runs (torch.compile(options=...) does not
                # reach the pass that packs INT8 convolution weights), so patch it for that call only.
                from torch._inductor import config as inductor_config

                with inductor_config.patch(freezing=True), warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # inductor's own copy-construct warnings
                    out = self.fn(*native)
                self._compiled.add(shapes)
                return out
            return self.fn(*native)

    def logits(self, out: torch.Tensor) -> np.ndarray:
        return out.detach().float().numpy()


class OrtRunner:
    def __init__(self, path: Path, threads: int | None, n_inputs: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.names = [i.name for i in self.session.get_inputs()]
        if len(self.names) != n_inputs:
            raise UserError(f"{path}: the model takes {len(self.names)} inputs ({', '.join(self.names)}) but the "
                            f"data gives {n_inputs}")

    def prepare(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        return {n: np.ascontiguousarray(x.numpy()) for n, x in zip(self.names, inputs)}

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]

    def logits(self, out: np.ndarray) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)


def open_runner(artifact: Artifact, compile: bool, threads: int | None, n_inputs: int) -> Runner:
    if artifact.format == "onnx":
        return OrtRunner(artifact.path, threads, n_inputs)
    from .export import load_program

    return TorchRunner(load_program(artifact.path), compile)
