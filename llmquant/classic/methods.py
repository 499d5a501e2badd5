"""The table of classic methods: name → lazy implementation ("module:attr"), so torchao and
onnxruntime are imported only when a recipe uses them.

An implementation is `fn(source, variant, splits, out_dir, ctx) -> summary`; it writes one
artifact into `out_dir` and returns {"artifact": file name, "format": "pt2" | "onnx", ...}.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ClassicMethod:
    impl: str
    bits: int | None  # what the leaderboard's bits column shows
    what: str
    needs: tuple[str, ...] = ("torchao",)  # importable packages


METHODS: dict[str, ClassicMethod] = {
    "dynamic": ClassicMethod("llmquant.classic.ptq:dynamic_int8", 8,
                             "torchao dynamic INT8: Linear weights INT8, activations quantized at run time"),
    "static": ClassicMethod("llmquant.classic.ptq:static_int8", 8,
                            "torchao pt2e static INT8 (X86 inductor quantizer), calibrated"),
    "qat": ClassicMethod("llmquant.classic.qat:qat_int8", 8, "torchao pt2e quantization-aware training, then INT8"),
    "cast": ClassicMethod("llmquant.classic.ptq:cast", 16, "FP16/BF16 casting"),
    "mixed": ClassicMethod("llmquant.classic.mixed:mixed", 8, "INT8 with chosen or most sensitive layers in float"),
    "onnx_fp32": ClassicMethod("llmquant.classic.onnx_rt:onnx_fp32", None, "ONNX export, float32, ONNX Runtime",
                               ("onnx", "onnxruntime")),
    "onnx_dynamic": ClassicMethod("llmquant.classic.onnx_rt:onnx_dynamic", 8, "ONNX Runtime quantize_dynamic",
                                  ("onnx", "onnxruntime")),
    "onnx_static": ClassicMethod("llmquant.classic.onnx_rt:onnx_static", 8, "ONNX Runtime quantize_static (QDQ)",
                                 ("onnx", "onnxruntime")),
}


def missing_packages(methods: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    """Packages the given methods (plus `extra`) need that cannot be imported here."""
    needed = {p for m in methods for p in METHODS[m].needs} | set(extra)
    return sorted(p for p in needed if importlib.util.find_spec(p) is None)


def get_method(name: str) -> Callable:
    mod, _, attr = METHODS[name].impl.partition(":")
    return getattr(importlib.import_module(mod), attr)
