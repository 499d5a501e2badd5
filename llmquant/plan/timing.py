"""How long quantizing takes, from per-block times measured on a CPU like this one.

Each row of MEASURED is a measurement in bench/results/ (the file is named): seconds per decoder
block for one method at one layer shape and calibration size, on one CPU model at one torch
dispatch capability. A plan's estimate takes the row of the same method, CPU model and capability
whose block is nearest in size and scales it by parameters x calibration tokens (RTN: by
parameters alone) to the planned model, times its layers. Scaled up to more tokens than measured,
the figure is an upper bound (`upper`): part of a block's time does not grow with the tokens
(GPTQ's solve; AWQ's search scores `search_samples` samples whatever the calibration size).
Nothing is estimated for a CPU with no measurement: the plan says so rather than guess across
machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    method: str
    cpu: str  # prefix of the CPU model name (cpu.cpu_info().model)
    capability: str  # torch.backends.cpu.get_cpu_capability()
    block_params: int
    tokens: int  # calibration tokens (n_samples x seqlen); 0 where the method takes none
    block_seconds: float
    source: str


LLAMA7B_BLOCK = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
SMOLLM2_BLOCK = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576

MEASURED: tuple[Measured, ...] = (
    Measured("rtn", "AMD EPYC", "AVX512", LLAMA7B_BLOCK, 0, 11.7, "bench/results/scale-2026-12-03-depth.md"),
    Measured("gptq", "AMD EPYC", "AVX512", LLAMA7B_BLOCK, 16 * 512, 139.6, "bench/results/scale-2026-12-03-depth.md"),
    Measured("awq", "AMD EPYC", "AVX512", LLAMA7B_BLOCK, 16 * 512, 226.9, "bench/results/scale-2026-12-03-depth.md"),
    Measured("gptq", "AMD EPYC", "AVX512", SMOLLM2_BLOCK, 128 * 512, 265.1 / 30, "bench/results/awq-speed-2026-12-03.md"),
    Measured("awq", "AMD EPYC", "AVX512", SMOLLM2_BLOCK, 128 * 512, 308.7 / 30, "bench/results/awq-speed-2026-12-03.md"),
    Measured("gptq", "AMD EPYC", "AVX2", SMOLLM2_BLOCK, 128 * 512, 9.8, "bench/results/awq-speed-2026-12-03.md"),
    Measured("awq", "AMD EPYC", "AVX2", SMOLLM2_BLOCK, 128 * 512, 18.2, "bench/results/awq-speed-2026-12-03.md"),
)


# The MEASURED GPTQ rows ran float32 Hessians and min/max grids. What the options added since cost on
# top, measured on Llama-2-7B's down_proj (the slowest solve of a block; bench/results/gptq-w3-2026-12-07.md):
# the block's forwards do not slow down, so for a whole block the product is at most this (`upper`).
SLOWER_OPTIONS: dict[tuple[str, str], float] = {
    ("precision", "float64"): 67.2 / 33.9,
    ("grid", "mse"): 77.8 / 67.2,
}


def option_factor(options: dict[str, str]) -> float:
    """How much slower a block runs with these solver settings than the MEASURED rows did."""
    return math.prod(SLOWER_OPTIONS.get(kv, 1.0) for kv in options.items())


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float
    source: str
    by_tokens: bool = False  # scaled up linearly in calibration tokens (part of a block's time is not)
    factor: float = 1.0  # the solver options' slowdown applied, measured on the slowest solve (option_factor)

    @property
    def upper(self) -> bool:
        """The time is at most this."""
        return self.by_tokens or self.factor > 1


def quantize_seconds(method: str, block_params: int, layers: int, tokens: int, cpu: str, capability: str,
                     table: tuple[Measured, ...] = MEASURED, options: dict[str, str] | None = None
                     ) -> TimeEstimate | None:
    """`options`: the variant's solver settings that SLOWER_OPTIONS prices (resolved: no "auto")."""
    rows = [m for m in table if m.method == method and cpu.startswith(m.cpu) and m.capability == capability]
    if not rows:
        return None
    row = min(rows, key=lambda m: abs(math.log(m.block_params / block_params)))
    scale = block_params / row.block_params
    if row.tokens and tokens:
        scale *= tokens / row.tokens
    factor = option_factor(options or {})
    return TimeEstimate(row.block_seconds * scale * layers * factor, row.source,
                        by_tokens=bool(row.tokens) and tokens > row.tokens, factor=factor)


def duration(seconds: float, upper: bool = False) -> str:
    sign = "<=" if upper else "~"
    if seconds >= 5400:
        return f"{sign}{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{sign}{seconds / 60:.0f} min"
    return f"{sign}{seconds:.0f} s"
