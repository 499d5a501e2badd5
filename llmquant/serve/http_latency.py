"""First-token latency and decode speed through the OpenAI streaming API, for any engine.

The same prompts as the in-process measurement (token ids, sent as a token-id prompt to
`/v1/completions`, so both engines see exactly the same tokens), greedy, `ignore_eos` so every run
generates `decode_tokens + 1` tokens. Per run:
- TTFT: from sending the request to receiving the first streamed token (so it includes the HTTP
  round trip, queueing and detokenization a client really sees);
- inter-token latency: the gaps between the following streamed chunks;
- decode tokens/s: (completion tokens - 1) / (last chunk - first chunk), completion tokens from `usage`.
Warm-up runs are discarded; median and p90 over the measured runs, as in `eval/latency.py`.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..eval.latency import LatencyResult, percentile
from ..progress import NULL_PROGRESS, Progress

log = logging.getLogger("llmquant")
clock = time.perf_counter  # (a test replaces it)


@dataclass(frozen=True)
class StreamTiming:
    ttft_s: float
    gaps_s: list[float]  # between consecutive token chunks after the first
    decode_s: float  # first token chunk to last
    completion_tokens: int


def stream_once(client, model: str, prompt: list[int], max_tokens: int) -> StreamTiming:
    t0 = clock()
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    stamps: list[float] = []
    n = None
    for chunk in stream:
        now = clock()
        # a token's chunk; not a closing chunk that only carries finish_reason (some engines send one)
        if chunk.choices and (chunk.choices[0].text or chunk.choices[0].finish_reason is None):
            stamps.append(now)
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
    if not stamps:
        raise RuntimeError("the server streamed no tokens")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return StreamTiming(stamps[0] - t0, gaps, stamps[-1] - stamps[0], n if n is not None else len(stamps))


def measure_http_latency(client, model: str, prompts: list[list[int]], decode_tokens: int, warmup: int,
                         progress: Progress = NULL_PROGRESS) -> LatencyResult:
    ttfts, rates, gaps = [], [], []
    runs = warmup + len(prompts)
    with progress.task("latency (http)", total=runs) as advance:
        for i in range(runs):
            p = prompts[i % len(prompts)] if i >= warmup else prompts[0]
            t = stream_once(client, model, p, decode_tokens + 1)
            if i >= warmup:
                ttfts.append(t.ttft_s * 1000)
                if t.completion_tokens > 1 and t.decode_s > 0:
                    rates.append((t.completion_tokens - 1) / t.decode_s)
                gaps += [g * 1000 for g in t.gaps_s]
            advance(1)
    return LatencyResult(
        prompt_tokens=int(statistics.median(len(p) for p in prompts)),
        ttft_ms_median=statistics.median(ttfts), ttft_ms_p90=percentile(ttfts, 90),
        decode_tokens=decode_tokens, decode_tok_s=statistics.median(rates) if rates else 0.0, runs=len(ttfts),
        itl_ms_median=statistics.median(gaps) if gaps else None,
        itl_ms_p90=percentile(gaps, 90) if gaps else None,
    )


def serve_spec_for_latency(latency: dict, dtype: str, device: str):
    """The serve settings a latency job carries, with the evaluation's dtype and device for the
    built-in server (so both paths measure the same model)."""
    from ..recipe import ServeSpec

    spec = ServeSpec.model_validate(latency.get("serve") or {})
    return spec.model_copy(update={"local": spec.local.model_copy(update={"dtype": dtype, "device": device})})


def latency_via_server(checkpoint: Path, prompts: list[Tensor], latency: dict, dtype: str, device: str,
                       trust_remote_code: bool = False, progress: Progress = NULL_PROGRESS) -> LatencyResult:
    """Start the serve engine on the checkpoint (a child process), measure, stop it."""
    from .artifact import resolve_target
    from .client import openai_client
    from .engine import resolve_engine, start_background

    spec = serve_spec_for_latency(latency, dtype, device)
    engine = resolve_engine(spec.engine)
    gc.collect()
    target = resolve_target(Path(checkpoint))
    progress.message(f"latency over HTTP: starting the {engine} engine on {target.checkpoint}")
    with start_background(target, spec, engine, None, trust_remote_code, tag="latency") as srv:
        ids = [p.reshape(-1).tolist() for p in prompts]
        return measure_http_latency(openai_client(srv.base_url), srv.model_name, ids,
                                    latency.get("decode_tokens", 32), latency.get("warmup", 1), progress)
