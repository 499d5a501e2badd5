"""Wall time and peak memory of one quantize step, for the variant's manifest and the board.

The peak is the process's resident high-water mark (VmHWM) after resetting it at the step's
start (Linux: writing 5 to /proc/self/clear_refs), so what the run did before (loading the
tokenizer, evaluating the baseline in-process) does not count. Where the reset is refused, the
peak is the process's since it started, and `quantize_peak_rss_scope` says so. On a GPU the
device's peak allocated bytes are recorded too.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

from ..eval.evaluate import peak_rss_bytes


def reset_peak_rss() -> bool:
    """Start a new resident high-water mark for this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def measure_step(device: str) -> Iterator[dict]:
    """Fills the yielded dict with quantize_seconds, quantize_peak_rss_bytes (and
    quantize_peak_device_bytes on CUDA) when the block ends without an error."""
    out: dict = {}
    scope = "step" if reset_peak_rss() else "process"
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    yield out
    out["quantize_seconds"] = round(time.perf_counter() - t0, 3)
    out["quantize_peak_rss_bytes"] = peak_rss_bytes()
    out["quantize_peak_rss_scope"] = scope
    if cuda:
        out["quantize_peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
