"""Will a checkpoint fit on the GPUs vLLM is given, and with how long a context? Pure arithmetic.

How vLLM spends a GPU (the facts this follows, read in vLLM's source):
- Its budget on each GPU is `total memory x gpu_memory_utilization`; the KV cache gets what is
  left after the profiled peak: `available_kv = total x util - peak`, where peak = weights +
  activations of a profiling forward + memory allocated outside torch (CUDA context, NCCL)
  (`vllm/v1/worker/gpu_worker.py`, `determine_available_memory`). It refuses to start when the
  GPU's free memory at start is below `total x util`.
- It refuses to start when the KV cache cannot hold one request of `max_model_len` tokens, and
  says which length would fit (`vllm/v1/core/kv_cache_utils.py`). Blocks are 16 tokens.
- KV cache per token on one GPU, full attention (page size in `vllm/v1/kv_cache_interface.py`):
      2 (K and V) x layers on the GPU's pipeline stage x KV heads per GPU x head_dim x bytes
  with KV heads per GPU = max(1, kv_heads // tp): heads are split by tensor parallelism and
  replicated when tp exceeds them (`ModelConfig.get_num_kv_heads`).
- Layers per pipeline stage: `layers // pp` each, the remainder one apiece to the stages before
  the last, counting backwards (`vllm/distributed/utils.py`, `get_pp_indices`).

Weights per GPU: its stage's layers, plus the input embedding on the first stage and the LM head
and final norm on the last (a tied head needs its own copy on the last stage when pp > 1), all
divided by tp (vocab-parallel embedding and head; norms are replicated but counted as split:
well under 1 % of any model).

Overhead per GPU (an estimate: `overhead_bytes` replaces it): 0.5 GiB outside torch (CUDA
context, cuBLAS workspaces, the 0.1-0.5 GiB vLLM logs as non-torch memory) plus activations of
vLLM's profiling run:
      max_num_batched_tokens x (4 x hidden + 2 x intermediate / tp) x activation bytes
    + max_num_seqs x vocab x 4 bytes x 2          (fp32 logits and probabilities of the sampler)
It leaves out CUDA graphs (`enforce_eager` avoids them) and torch.compile buffers, so treat the
margin as a floor: vLLM's own log line "Available KV cache memory" is the measured truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

GiB = 1 << 30
BLOCK_TOKENS = 16
NON_TORCH_BYTES = GiB // 2


@dataclass(frozen=True)
class ModelShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    max_positions: int | None
    tied: bool


@dataclass(frozen=True)
class WeightBytes:
    """Bytes the weights take on the GPU (at the served dtype), by where they live."""

    embed: int
    head: int  # lm_head (0 when tied to the embedding)
    final: int  # final norm and anything else outside the layers
    per_layer: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.embed + self.head + self.final + sum(self.per_layer)


@dataclass(frozen=True)
class GpuMemory:
    total: int
    free: int


@dataclass(frozen=True)
class FitRequest:
    util: float = 0.9
    tp: int = 1
    pp: int = 1
    max_model_len: int | None = None  # None: choose the largest that fits
    kv_bytes: int = 2  # per KV element: 2 for fp16/bf16, 1 for fp8
    act_bytes: int = 2
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    overhead_bytes: int | None = None  # per GPU; None: estimate
    full_length_seqs: int = 1  # requests of max_model_len the cache must hold at once (vLLM: 1)
    min_model_len: int = 256  # when choosing, refuse below this


@dataclass(frozen=True)
class StageFit:
    stage: int
    layers: int
    weights: int  # per GPU
    overhead: int
    budget: int  # total x util of the smallest GPU of the stage
    kv_per_token: int  # per GPU
    kv_available: int  # budget - weights - overhead (may be negative)

    @property
    def max_tokens(self) -> int:
        """Largest context (whole blocks) whose KV cache fits in what is left."""
        if self.kv_available <= 0 or self.kv_per_token == 0:
            return 0
        return self.kv_available // (self.kv_per_token * BLOCK_TOKENS) * BLOCK_TOKENS


@dataclass(frozen=True)
class FitPlan:
    max_model_len: int
    chosen: bool  # True when the fit check chose the length
    stages: tuple[StageFit, ...]
    full_length_seqs: int

    @property
    def worst(self) -> StageFit:
        return min(self.stages, key=lambda s: s.max_tokens)

    def kv_needed(self, stage: StageFit) -> int:
        return kv_cache_bytes(stage.kv_per_token, self.max_model_len) * self.full_length_seqs

    def describe(self) -> str:
        s = self.worst
        gpus = f"per GPU (stage {s.stage} of {len(self.stages)})" if len(self.stages) > 1 else "per GPU"
        return (f"max_model_len {self.max_model_len}{' (chosen)' if self.chosen else ''}: {gpus} weights "
                f"{gib(s.weights)} + overhead {gib(s.overhead)} + KV cache {gib(self.kv_needed(s))} "
                f"of a budget of {gib(s.budget)}; up to {s.max_tokens} tokens of KV fit")


def gib(n: int | float) -> str:
    return f"{n / GiB:.2f} GiB"


def layers_per_stage(n_layers: int, pp: int) -> list[int]:
    """vLLM's even split: the remainder goes one layer each to the stages before the last."""
    if pp < 1 or pp > n_layers:
        raise UserError(f"serve.vllm.pipeline_parallel_size: {pp}; must be between 1 and the model's {n_layers} layers")
    parts = [n_layers // pp] * pp
    for i in range(2, n_layers % pp + 2):
        parts[-i] += 1
    return parts


def kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    return max(1, kv_heads // tp)


def kv_bytes_per_token(shape: ModelShape, layers: int, tp: int, kv_bytes: int) -> int:
    return 2 * layers * kv_heads_per_gpu(shape.kv_heads, tp) * shape.head_dim * kv_bytes


def kv_cache_bytes(per_token: int, tokens: int) -> int:
    """KV cache for one request of `tokens`, in whole 16-token blocks."""
    return math.ceil(tokens / BLOCK_TOKENS) * BLOCK_TOKENS * per_token


def stage_weight_bytes(w: WeightBytes, stage_layers: list[int], tp: int, tied: bool) -> list[int]:
    """Weights on one GPU of each pipeline stage."""
    out, start = [], 0
    pp = len(stage_layers)
    for s, n in enumerate(stage_layers):
        b = sum(w.per_layer[start:start + n])
        start += n
        if s == 0:
            b += w.embed
        if s == pp - 1:
            head = w.head if w.head else (w.embed if tied and pp > 1 else 0)
            b += w.final + head
        out.append(math.ceil(b / tp))
    return out


def activation_bytes(shape: ModelShape, req: FitRequest) -> int:
    hidden = req.max_num_batched_tokens * (4 * shape.hidden + 2 * shape.intermediate // req.tp) * req.act_bytes
    sampler = req.max_num_seqs * shape.vocab * 4 * 2
    return hidden + sampler


def overhead_bytes(shape: ModelShape, req: FitRequest) -> int:
    if req.overhead_bytes is not None:
        return req.overhead_bytes
    return NON_TORCH_BYTES + activation_bytes(shape, req)


def check_free_memory(gpus: list[GpuMemory], util: float) -> None:
    """vLLM refuses to start when a GPU has less free memory than total x util."""
    for i, g in enumerate(gpus):
        want = int(g.total * util)
        if g.free < want:
            fits = math.floor(g.free / g.total * 100) / 100
            raise UserError(
                f"serve.vllm.gpu_memory_utilization: {util:g} asks vLLM for {gib(want)} of GPU {i}, which has only "
                f"{gib(g.free)} free of {gib(g.total)} (short by {gib(want - g.free)}); set it to {fits:.2f} or less, "
                "or free the GPU")


def plan_fit(shape: ModelShape, weights: WeightBytes, gpus: list[GpuMemory], req: FitRequest) -> FitPlan:
    """Choose or check max_model_len for tp x pp GPUs; raise a UserError saying by how much it does not fit."""
    n = req.tp * req.pp
    if len(gpus) < n:
        raise UserError(f"serve.vllm: tensor_parallel_size x pipeline_parallel_size = {n} GPUs, but only "
                        f"{len(gpus)} are visible; set serve.vllm.gpu_memory_gib for GPUs on other machines (Ray)")
    if shape.heads % req.tp:
        raise UserError(f"serve.vllm.tensor_parallel_size: {req.tp} does not divide the model's {shape.heads} attention "
                        "heads (vLLM requires it); use a divisor, or pipeline_parallel_size for the rest")
    gpus = gpus[:n]
    check_free_memory(gpus, req.util)
    split = layers_per_stage(shape.layers, req.pp)
    per_gpu_weights = stage_weight_bytes(weights, split, req.tp, shape.tied)
    over = overhead_bytes(shape, req)
    stages = []
    for s, (layers, wb) in enumerate(zip(split, per_gpu_weights)):
        budget = min(int(g.total * req.util) for g in gpus[s * req.tp:(s + 1) * req.tp])
        stages.append(StageFit(s, layers, wb, over, budget, kv_bytes_per_token(shape, layers, req.tp, req.kv_bytes),
                               budget - wb - over))
    worst = min(stages, key=lambda st: st.kv_available)
    where = f" on pipeline stage {worst.stage}" if req.pp > 1 else ""
    if worst.kv_available <= 0:
        raise UserError(
            f"serve.vllm: the weights ({gib(worst.weights)} per GPU) and overhead ({gib(worst.overhead)}) exceed the "
            f"budget of {gib(worst.budget)} (GPU memory x gpu_memory_utilization {req.util:g}){where} by "
            f"{gib(-worst.kv_available)}, before any KV cache; use more GPUs (tensor_parallel_size), fewer bits, "
            "or a higher gpu_memory_utilization")
    # each stage must hold full_length_seqs requests of the length
    fits = min(st.kv_available // (st.kv_per_token * BLOCK_TOKENS * req.full_length_seqs) * BLOCK_TOKENS
               for st in stages)
    if req.max_model_len is None:
        length = min(fits, shape.max_positions) if shape.max_positions else fits
        floor = min(req.min_model_len, shape.max_positions or req.min_model_len)
        if length < floor:
            need = kv_cache_bytes(worst.kv_per_token, floor) * req.full_length_seqs
            raise UserError(
                f"serve.vllm: only {fits} tokens of context fit{where} ({gib(worst.kv_available)} left for the KV "
                f"cache after weights and overhead); {floor} tokens need {gib(need)}, short by "
                f"{gib(need - worst.kv_available)}; use more GPUs, kv_cache_dtype fp8 or a higher gpu_memory_utilization")
        return FitPlan(length, True, tuple(stages), req.full_length_seqs)
    if shape.max_positions and req.max_model_len > shape.max_positions:
        raise UserError(f"serve.vllm.max_model_len: {req.max_model_len} is above the model's "
                        f"max_position_embeddings {shape.max_positions}")
    for st in stages:
        need = kv_cache_bytes(st.kv_per_token, req.max_model_len) * req.full_length_seqs
        if need > st.kv_available:
            w = f" on pipeline stage {st.stage}" if req.pp > 1 else ""
            raise UserError(
                f"serve.vllm.max_model_len: {req.max_model_len} tokens need {gib(need)} of KV cache per GPU{w}, but "
                f"{gib(st.kv_available)} is left after weights ({gib(st.weights)}) and overhead ({gib(st.overhead)}): "
                f"short by {gib(need - st.kv_available)}; at most {fits} tokens fit (lower max_model_len, use "
                "kv_cache_dtype fp8, a higher gpu_memory_utilization or more GPUs)")
    return FitPlan(req.max_model_len, False, tuple(stages), req.full_length_seqs)
