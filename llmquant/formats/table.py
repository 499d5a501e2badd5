"""The table of checkpoint formats: quant_method -> CheckpointFormat (format.py).

One line per format, naming the module that defines its `CHECKPOINT_FORMAT`. The module is
imported when its entry is first read, so the table itself costs no torch import.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from .format import CheckpointFormat

MODULES: dict[str, str] = {
    "none": "llmquant.formats.dense",  # unquantized Hugging Face checkpoints
    "gptq": "llmquant.formats.gptq_v1",  # GPTQ v1 (written and read) and GPTQModel v2 (read)
    "awq": "llmquant.formats.awq_gemm",
    "compressed-tensors": "llmquant.formats.compressed_tensors",
    "bitsandbytes": "llmquant.formats.bnb",
}


class FormatTable(Mapping[str, CheckpointFormat]):
    """A read-only mapping that imports a format's module on first access."""

    def __init__(self, modules: dict[str, str]):
        self._modules = dict(modules)

    def __getitem__(self, method: str) -> CheckpointFormat:
        fmt = importlib.import_module(self._modules[method]).CHECKPOINT_FORMAT
        if fmt.quant_method != method:
            raise RuntimeError(f"{self._modules[method]}.CHECKPOINT_FORMAT is {fmt.quant_method!r}, listed as {method!r}")
        return fmt

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __contains__(self, method: object) -> bool:
        return method in self._modules


FORMATS = FormatTable(MODULES)


def quantized_methods() -> list[str]:
    """The quant_methods llmquant reads (every format but the dense one), sorted."""
    return sorted(m for m in FORMATS if m != "none")


def format_named(name: str) -> CheckpointFormat:
    """The format a name means: a FORMATS key ("gptq") or the name a written checkpoint
    reports ("gptq-v1", `CheckpointFormat.writes`). KeyError names the known ones."""
    if name in FORMATS:
        return FORMATS[name]
    for method in FORMATS:
        fmt = FORMATS[method]
        if fmt.writes == name:
            return fmt
    raise KeyError(f"unknown checkpoint format {name!r}; known: {', '.join(FORMATS)}")
