"""Peak memory and disk of each step of a run, as pure arithmetic on a model's footprint.

Every figure is an estimate built from named terms (so the plan can say what takes the memory),
summed, then multiplied by ALLOCATOR_SLACK for what the terms leave out (allocator arenas,
fragmentation, small temporaries). The terms follow what the code holds at its peak:

Quantizing (llmquant's own methods; one block resident, quantize/lazy.py):
- the process: torch, transformers, the tokenizer and the calibration tokens (PROCESS_BYTES);
- the block being read: its file pages (stored dtype, memory-mapped) and its float32 copy;
- the calibration activations, block inputs and outputs: 2 x tokens x hidden x activation bytes,
  at most `calibration.activation_budget_mb` (the rest spill to the run's work dir: disk);
- the method's working set (WORKING_SETS, one entry per method):
  rtn: the weight being rounded and its dequantized copy;
  gptq: one Hessian per distinct input (in^2, float32 or float64), two more of the largest for the solve
  (Cholesky and inverse), and the staged loop's parked batches (every Linear's outputs plus four
  hidden-wide tensors per token, within the activation budget; quantize/activations.py);
  awq: the float32 copy of the block's original weights, the inputs recorded for the search (every
  distinct input at every token), the search's working memory (`max_chunk_memory_mb`) and the
  float reference outputs;
  signround: the float targets, the learned offsets (with gradients and the best copy), the
  fake-quantized weights with gradients, and one step's backward pass (signround_working).
- Writing the embeddings and the LM head (the streamed checkpoint's last step): each read from
  its file pages and converted to the save dtype.
- Methods that load the whole model themselves (bnb, and the peers' workers) hold the whole
  model in its stored dtype plus a float32 copy of the largest Linear.

Evaluating: the process (twice with `eval.isolate`: the parent and the worker), the weights as
loaded (float32 when a 16-bit CPU evaluation re-scores `eval.check_windows` in float32 and the
checkpoint is stored in float32; else 16-bit: eval/upcast.py; packed checkpoints: the packed
tensors as stored plus the rest at that dtype, and the int32 integers of the layer being
unpacked at load), the dequantized copy of the largest Linear, and one window: logits in the compute dtype
and in float32 and the cross-entropy's float32 log-probabilities (vocab x tokens x (d + 8)),
hidden states and MLP activations in float32, attention scores (heads x tokens^2 x 4).

Checked against measurements (bench/results/scale-2026-12-03*.md, Llama-2-7B-shaped blocks,
16 x 512 calibration, AMD EPYC): measured peak RSS RTN 2.37-2.50 GiB, GPTQ 5.82, AWQ 5.19-6.11
(a transient of the search that varies run to run); these terms give 2.41, 6.12, 5.26
(`bench/scale.py` prints both side by side; AWQ's can be 14 % under). Other
models, calibration sizes and machines may differ more: the plan labels them estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .footprint import Footprint

GiB = 1 << 30
PROCESS_BYTES = int(0.6 * GiB)  # python + torch + transformers + tokenizer, measured ~0.5-0.6 GiB
CUDA_CONTEXT_BYTES = GiB // 2
ALLOCATOR_SLACK = 1.15
# evaluating a packed checkpoint peaked 0.16-0.40 GiB above its weights and window, varying run to
# run, on an 8-layer 1024-wide model (tests/unit/test_eval_memory.py's child, 2026-12-03); the
# source of the variation is not found, so the upper end is planned for
PACKED_SETUP_BYTES = 400 << 20
PACKED_SETUP = "packed-layer set-up (measured transient, CPU)"
Terms = dict[str, int]


@dataclass(frozen=True)
class Calibration:
    n_samples: int
    seqlen: int
    activation_bytes: int = 4  # float32; 2 with calibration.activation_dtype bfloat16
    budget_bytes: int | None = 4096 << 20

    @property
    def tokens(self) -> int:
        return self.n_samples * self.seqlen

    def within_budget(self, n: int) -> int:
        return n if self.budget_bytes is None else min(n, self.budget_bytes)


@dataclass(frozen=True)
class QuantizeOptions:
    """What of a variant changes its memory (filled from the recipe by plan.build)."""

    max_chunk_bytes: int = 1024 << 20  # AWQ's max_chunk_memory_mb
    search_tokens: int | None = None  # AWQ: tokens recorded for the search (None: every token)
    gradient_sequences: int = 0  # mixed, weighting fisher: sequences of the streamed backward pass
    solve_bytes: int = 4  # GPTQ's Hessians and solve: 4 (float32) or 8 (precision float64)
    tune_samples: int = 0  # SignRound: calibration samples per step (its batch_size)


def total(terms: Terms) -> int:
    return int(sum(terms.values()) * ALLOCATOR_SLACK)


# -- quantizing -------------------------------------------------------------------------------


def block_terms(fp: Footprint, calib: Calibration | None) -> Terms:
    t = {"block file pages": int(fp.block_params * fp.stored_bytes), "block float32": fp.block_params * 4}
    if calib is not None:
        t["calibration activations"] = calib.within_budget(2 * calib.tokens * fp.hidden * calib.activation_bytes)
    return t


def rtn_working(fp: Footprint, calib: Calibration | None, opts: QuantizeOptions) -> Terms:
    return {"weight and its dequantized copy": 2 * fp.largest_linear * 4}


def gptq_working(fp: Footprint, calib: Calibration | None, opts: QuantizeOptions) -> Terms:
    assert calib is not None
    widths = fp.distinct_inputs()
    largest = max(widths, default=0)
    parked_width = sum(lin.out_features for lin in fp.linears) + 4 * fp.hidden
    b = opts.solve_bytes
    return {"Hessians": sum(w * w * b for w in widths), "solve (Cholesky, inverse)": 2 * largest * largest * b,
            "parked batches": calib.within_budget(calib.tokens * parked_width * calib.activation_bytes)}


def awq_working(fp: Footprint, calib: Calibration | None, opts: QuantizeOptions) -> Terms:
    assert calib is not None
    tokens = min(calib.tokens, opts.search_tokens or calib.tokens)
    return {"original block float32": fp.block_params * 4,
            "recorded inputs": tokens * sum(fp.distinct_inputs()) * 4,
            "search chunks": opts.max_chunk_bytes,
            "float reference outputs": calib.tokens * fp.hidden * 4}


def mixed_working(fp: Footprint, calib: Calibration | None, opts: QuantizeOptions) -> Terms:
    """GPTQ's terms (its sensitivity pass holds the same Hessians per block; then it is GPTQ), and
    the output-gradient pass: the kept block inputs (within the activation budget; the rest spill),
    each sequence's gradient, and one sequence's logits with their gradient."""
    assert calib is not None
    t = gptq_working(fp, calib, opts)
    n = opts.gradient_sequences
    if n:
        t["gradient pass: kept block inputs"] = calib.within_budget(
            n * calib.seqlen * fp.hidden * calib.activation_bytes * fp.layers)
        t["gradient pass: gradients, logits"] = n * calib.seqlen * fp.hidden * 4 + 3 * calib.seqlen * fp.vocab * 4
    return t


def signround_working(fp: Footprint, calib: Calibration | None, opts: QuantizeOptions) -> Terms:
    """SignRound's tuning of one block (quantize/signround/): the float outputs it is fitted to (with
    target: model, the float stream carried from block to block; with target: block, one block's
    targets; the same size, counted in float32), the learned offsets (one per weight) with their
    gradients and the best step's copy, each step's fake-quantized weights with their gradients, and
    one batch's backward pass: the activations autograd keeps (every Linear's input and output, norms
    and residuals: about the Linears' output widths plus six hidden-wide tensors per token) and the
    attention probabilities (kept only where attention runs its plain kernel; the fused one keeps
    none: an upper bound)."""
    assert calib is not None
    tokens = opts.tune_samples * calib.seqlen
    saved_width = sum(lin.out_features for lin in fp.linears) + 6 * fp.hidden
    return {"float targets": calib.within_budget(calib.tokens * fp.hidden * 4),
            "rounding offsets, gradients, best copy": 3 * fp.block_params * 4,
            "fake-quantized weights and gradients": 2 * fp.block_params * 4,
            "one step's backward": tokens * saved_width * 4
            + opts.tune_samples * fp.heads * calib.seqlen * calib.seqlen * 4}


# one line per method; a method missing here is planned as if it loaded the whole model
WORKING_SETS: dict[str, Callable[[Footprint, Calibration | None, QuantizeOptions], Terms]] = {
    "rtn": rtn_working,
    "gptq": gptq_working,
    "awq": awq_working,
    "mixed": mixed_working,
    "signround": signround_working,
}


def outer_terms(fp: Footprint, save_bytes: int) -> Terms:
    """Writing the embeddings and LM head: file pages plus the converted copy."""
    per = int(fp.stored_bytes) + save_bytes
    return {"embeddings and LM head (read, converted)": (fp.embed_params + fp.head_params) * per}


def whole_model_terms(fp: Footprint) -> Terms:
    return {"whole model (stored dtype)": int(fp.total_params * fp.stored_bytes),
            "largest Linear float32": fp.largest_linear * 4}


def quantize_host(fp: Footprint, method: str, calib: Calibration | None, opts: QuantizeOptions,
                  on_gpu: bool = False, save_bytes: int = 2) -> Terms:
    """Peak host memory of quantizing with `method` (the larger of the block phase and the write
    of the embeddings); on a GPU the block and working set live there (quantize_device)."""
    working = WORKING_SETS.get(method)
    if working is None:
        return {"process": PROCESS_BYTES, **whole_model_terms(fp)}
    block = block_terms(fp, calib)
    if on_gpu:  # the block is read on the host and moved; activations stay on the host
        block = {k: v for k, v in block.items() if k != "block float32"}
        phase = {"process": PROCESS_BYTES, **block}
    else:
        phase = {"process": PROCESS_BYTES, **block, **working(fp, calib, opts)}
    outer = {"process": PROCESS_BYTES, **outer_terms(fp, save_bytes)}
    return phase if sum(phase.values()) >= sum(outer.values()) else outer


def quantize_device(fp: Footprint, method: str, calib: Calibration | None, opts: QuantizeOptions) -> Terms:
    """Peak GPU memory when the block computes on a GPU: the block, the working set, one batch."""
    working = WORKING_SETS.get(method)
    if working is None:
        return {"CUDA context": CUDA_CONTEXT_BYTES, **whole_model_terms(fp)}
    t = {"CUDA context": CUDA_CONTEXT_BYTES, "block float32": fp.block_params * 4, **working(fp, calib, opts)}
    if calib is not None:
        t["one batch of activations"] = 2 * calib.seqlen * fp.hidden * 4
    return t


def spill_bytes(fp: Footprint, calib: Calibration | None) -> int:
    """Calibration activations past the budget, written to the work dir."""
    if calib is None or calib.budget_bytes is None:
        return 0
    return max(0, 2 * calib.tokens * fp.hidden * calib.activation_bytes - calib.budget_bytes)


# -- evaluating and serving -------------------------------------------------------------------


def window_terms(fp: Footprint, tokens: int, batch: int, dtype_bytes: int) -> Terms:
    n = tokens * batch
    return {"logits and log-probabilities": n * fp.vocab * (dtype_bytes + 8),
            "hidden and MLP activations": n * (4 * fp.hidden + 3 * fp.intermediate) * 4,
            "attention scores": batch * fp.heads * tokens * tokens * 4}


def eval_terms(fp: Footprint, packed_bytes: int | None, unpacked_params: int, load_bytes: int,
               dtype_bytes: int, tokens: int, batch: int, isolate: bool) -> Terms:
    """Peak of evaluating: dense weights when `packed_bytes` is None, else packed + the rest."""
    t = {"process": PROCESS_BYTES * (2 if isolate else 1)}
    if packed_bytes is None:
        t["weights"] = fp.total_params * load_bytes
    else:
        t["packed weights"] = packed_bytes
        t["embeddings, head, norms"] = unpacked_params * load_bytes
        t["dequantized Linear"] = fp.largest_linear * dtype_bytes
        t["unpacking one layer (int32, reordered)"] = fp.largest_linear * 4 * 2
        t[PACKED_SETUP] = PACKED_SETUP_BYTES
    t.update(window_terms(fp, tokens, batch, dtype_bytes))
    return t


def kv_cache_bytes(fp: Footprint, tokens: int, kv_bytes: int = 2) -> int:
    return 2 * fp.layers * fp.kv_heads * fp.head_dim * tokens * kv_bytes


def local_serve_terms(fp: Footprint, packed_bytes: int | None, unpacked_params: int, dtype_bytes: int,
                      tokens: int) -> Terms:
    """The built-in server: the checkpoint as the evaluation loads it (no float32 check), one
    request's forward over `tokens` and its KV cache."""
    t = eval_terms(fp, packed_bytes, unpacked_params, dtype_bytes, dtype_bytes, tokens, 1, False)
    t["KV cache"] = kv_cache_bytes(fp, tokens)
    return t
