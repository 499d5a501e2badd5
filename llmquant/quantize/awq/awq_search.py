"""Replaying a module (a block's attention or MLP) on recorded calibration inputs, to score AWQ
scale candidates on that module's output.

`CallRecorder` is a forward pre-hook that keeps the arguments of a module's calls during the
block's observing forward (the first `max_samples` samples, split into chunks that respect a
memory bound, floats cast to the search dtype). `module_loss` turns them into the loss of the
scale search: the mean squared difference between the module's output with the float weights
(computed once) and with the candidate weights Q(W·s)/s substituted through
`torch.func.functional_call` (the module itself is never modified).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .awq_math import Quantizer, scaled_fake_quantize

CACHE_KWARGS = ("cache", "past_key_value", "past_key_values")


def _first_tensor(args: tuple, kwargs: dict) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    for key in ("hidden_states", "x", "input"):
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    raise RuntimeError("cannot find the input tensor of a recorded module call")


def _map(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def slice_batch(obj: Any, start: int, stop: int, batch: int) -> Any:
    """Samples [start, stop) of every tensor whose first dimension is the batch (others as they are)."""
    return _map(obj, lambda t: t[start:stop] if t.dim() and t.shape[0] == batch else t)


@contextlib.contextmanager
def reusing_freed_memory(limit: int = 256 << 20):
    """Let glibc keep and reuse freed blocks below `limit` bytes while the search runs.

    The sequential loop pins glibc's mmap threshold at 128 KiB (sequential.return_freed_memory)
    so that RSS follows the live set; every large temporary is then a fresh mmap whose pages
    are faulted in on first touch. The scale search allocates and frees the same few activation
    sizes thousands of times: with the pin, page faults took about 40 % of its time (sys time
    15 s of 26 s on 3 SmolLM2 blocks). Inside this context blocks up to `limit` come from the
    heap and are reused; on exit the pin is restored and the freed heap is returned to the OS
    (malloc_trim). Process-wide; a no-op where glibc is absent.
    """
    libc = None
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if name and "libc" in name:
            libc = ctypes.CDLL(name)
    except OSError:
        libc = None
    if libc is None:
        yield
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, limit)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * limit)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)


def autocast_context(dtype: torch.dtype, device: torch.device):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class CallRecorder:
    """Records the calls of one module (pre-hook with kwargs) for the scale search.

    Two ways to choose what the search scores:
      by samples   (token_stride None) the calls of the first `max_samples` calibration samples
                   (None: all), whole sequences: what attention needs (every token attends to
                   the ones before it);
      by tokens    (token_stride k) every k-th token of every call, over the whole calibration
                   set, for a module that acts on each token alone (an MLP): the same number of
                   tokens as max_samples whole samples would give, spread over every sample, so
                   the loss estimate does not hang on which samples came first. Only a call
                   with one tensor argument can be split by tokens; any other call switches the
                   recorder to whole samples at its first call.
    Recorded floats are cast to `dtype`; the calls are cut into chunks whose working memory
    (`bytes_per_token` per token) stays within `max_chunk_bytes`."""

    def __init__(self, module: nn.Module, max_samples: int | None, dtype: torch.dtype, bytes_per_token: int,
                 max_chunk_bytes: int, token_stride: int | None = None):
        self.module, self.max_samples, self.dtype = module, max_samples, dtype
        self.bytes_per_token, self.max_chunk_bytes = bytes_per_token, max_chunk_bytes
        self.token_stride = token_stride
        self.calls: list[tuple[tuple, dict]] = []
        self.samples = 0
        self.tokens_seen = 0
        self._rows: list[Tensor] = []  # by tokens: the kept rows, cut into calls at remove()
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _cast(self, t: Tensor) -> Tensor:
        return t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.token_stride is not None:
            plain = len(args) == 1 and not kwargs and isinstance(args[0], Tensor)
            if plain:
                self._keep_tokens(args[0])
                return
            if self.tokens_seen:
                raise RuntimeError(f"{type(module).__name__} was called with one tensor, then with other "
                                   "arguments: the AWQ search cannot replay it token by token")
            self.token_stride = None  # the first call is not a one-tensor call: whole samples
        if self.max_samples is not None and self.samples >= self.max_samples:
            return
        x = _first_tensor(args, kwargs)
        batch = x.shape[0] if x.dim() > 2 else 1
        take = batch if self.max_samples is None else min(batch, self.max_samples - self.samples)
        kwargs = {k: (None if k in CACHE_KWARGS else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        tokens = x.numel() // x.shape[-1] // batch  # per sample
        per_chunk = max(1, self.max_chunk_bytes // max(1, tokens * self.bytes_per_token))
        for start in range(0, take, per_chunk):
            stop = min(take, start + per_chunk)
            part = (args, kwargs) if (start, stop) == (0, batch) else slice_batch((args, kwargs), start, stop, batch)
            self.calls.append(_map(part, self._cast))
        self.samples += take

    def _keep_tokens(self, x: Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        first = (-self.tokens_seen) % self.token_stride  # the stride runs on across calls
        self._rows.append(self._cast(flat[first::self.token_stride]).clone())
        self.tokens_seen += flat.shape[0]

    def remove(self) -> None:
        self.handle.remove()
        if self._rows:
            rows = torch.cat(self._rows)
            self._rows = []
            per_chunk = max(1, self.max_chunk_bytes // max(1, self.bytes_per_token))
            self.calls = [((chunk.unsqueeze(0),), {}) for chunk in rows.split(per_chunk)]

    @property
    def tokens(self) -> int:
        """Tokens the recorded calls hold."""
        return sum(_first_tensor(a, k).numel() // _first_tensor(a, k).shape[-1] for a, k in self.calls)


def _output(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def working_bytes_per_token(module: nn.Module, width: int) -> int:
    """A rough bound of one token's activations inside `module`: every Linear's output and a few
    copies of the input width, in float32 (rotary embeddings and norms run in float32)."""
    outs = sum(m.out_features for m in module.modules() if isinstance(m, nn.Linear))
    return 4 * (outs + 4 * width)


def module_loss(recorder: CallRecorder, names: list[str], weights: list[Tensor], quants: list[Quantizer],
                device: torch.device) -> Callable[[Tensor], float]:
    """loss(s): MSE between the module's outputs with its own weights and with each `names[i]`
    (a parameter name inside the module, e.g. 'q_proj.weight') replaced by Q(W_i·s)/s."""
    module, dtype = recorder.module, recorder.dtype
    with torch.no_grad(), autocast_context(dtype, device):
        refs = [_output(module(*a, **k)) for a, k in recorder.calls]

    def loss(s: Tensor) -> float:
        params = {n: scaled_fake_quantize(w, s, q).to(dtype) for n, w, q in zip(names, weights, quants)}
        total, count = 0.0, 0
        with torch.no_grad(), autocast_context(dtype, device):
            for (a, k), ref in zip(recorder.calls, refs):
                out = _output(functional_call(module, params, a, k))
                total += float((out.float() - ref.float()).pow(2).sum())
                count += out.numel()
        return total / max(1, count)

    return loss
