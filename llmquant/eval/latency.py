"""First-token latency and decode speed, measured the same way for every variant.

TTFT = prefill of an N-token prompt + choosing the first token (greedy), batch 1, KV cache on.
Decode = the following tokens one at a time with the cache; tokens/s over those steps.
Warm-up runs are discarded; median and p90 are over the measured runs.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..progress import NULL_PROGRESS, Progress


@dataclass(frozen=True)
class LatencyResult:
    prompt_tokens: int
    ttft_ms_median: float
    ttft_ms_p90: float
    decode_tokens: int
    decode_tok_s: float
    runs: int
    itl_ms_median: float | None = None  # inter-token latency; measured over HTTP (serve/http_latency.py)
    itl_ms_p90: float | None = None


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompts_from_stream(ids: Tensor, n: int, length: int) -> list[Tensor]:
    """`n` prompts of `length` tokens, evenly spaced over the eval stream (deterministic)."""
    flat = ids.reshape(-1)
    if flat.numel() < length:
        raise ValueError(f"eval stream has {flat.numel()} tokens, fewer than a {length}-token prompt")
    span = flat.numel() - length
    starts = [span * i // max(n - 1, 1) for i in range(n)]
    return [flat[s:s + length].unsqueeze(0) for s in starts]


def cache_kwarg(model: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out) -> object:
    return out["cache"] if "cache" in out else out["past_key_values"]


@torch.inference_mode()
def _one_run(model: nn.Module, prompt: Tensor, decode_tokens: int, device: torch.device) -> tuple[float, float]:
    x = prompt.to(device)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=x, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    ttft = time.perf_counter() - t0
    kw = cache_kwarg(model)
    past = _cache_of(out)
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{kw: past})
        past = _cache_of(out)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    return ttft, time.perf_counter() - t1


def measure_latency(model: nn.Module, prompts: list[Tensor], decode_tokens: int, warmup: int,
                    progress: Progress = NULL_PROGRESS) -> LatencyResult:
    """`prompts` are used in turn; the first `warmup` runs are not counted."""
    device = next(model.parameters()).device
    ttfts, decodes = [], []
    runs = warmup + len(prompts)
    with progress.task("latency", total=runs) as advance:
        for i in range(runs):
            p = prompts[i % len(prompts)] if i >= warmup else prompts[0]
            ttft, dec = _one_run(model, p, decode_tokens, device)
            if i >= warmup:
                ttfts.append(ttft * 1000)
                decodes.append(dec)
            advance(1)
    return LatencyResult(
        prompt_tokens=int(statistics.median(p.shape[-1] for p in prompts)),
        ttft_ms_median=statistics.median(ttfts),
        ttft_ms_p90=percentile(ttfts, 90),
        decode_tokens=decode_tokens,
        decode_tok_s=decode_tokens / statistics.median(decodes),
        runs=len(ttfts),
    )
