"""Small C kernels compiled on first use for the CPU torch dispatches to, loaded with ctypes.

torch has no CPU kernel for grouped 8-bit weights (its int8 kernel takes one scale per output
row), and inductor's code for that reduction is fast at AVX512 but ~20x slower at AVX2
(bench/results/kernels-*.md). The C source (csrc/) is compiled with the system compiler (the
one torch.compile already needs) with flags for the current capability, cached per capability
and source hash next to torch.compile's cache, and linked against the OpenMP runtime torch has
loaded. Where there is no compiler, `load` returns None and callers keep their torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("llmquant")
SRC = Path(__file__).parent / "csrc"
FLAGS = {  # torch dispatch capability -> target flags (the kernel is plain C; the compiler vectorises)
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


def cache_root() -> Path:
    base = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "llmquant")
    return Path(base) / "llmquant-native"


def _compile(source: Path, capability: str) -> Path | None:
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        return None
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp", *FLAGS.get(capability, [])]
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
    key = hashlib.sha256(source.read_bytes() + headers + " ".join(flags).encode()).hexdigest()[:16]
    out = cache_root() / f"{source.stem}-{capability.lower()}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    res = subprocess.run([cc, *flags, str(source), "-o", str(tmp)], capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("could not compile %s for %s (%s); using torch kernels", source.name, capability,
                    (res.stderr.strip().splitlines() or ["no output"])[-1])
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, out)  # atomic: concurrent processes see a whole library or none
    return out


@functools.lru_cache(maxsize=None)
def _load(name: str, capability: str) -> ctypes.CDLL | None:
    path = _compile(SRC / f"{name}.c", capability)
    if path is None:
        return None
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        log.warning("could not load %s (%s); using torch kernels", path, e)
        return None


def load(name: str) -> ctypes.CDLL | None:
    """The compiled library csrc/<name>.c for this process's capability, or None."""
    if os.environ.get("LLMQUANT_NATIVE", "1") == "0":
        return None
    return _load(name, torch.backends.cpu.get_cpu_capability())


def _ptr(t: Tensor):
    return ctypes.c_void_p(t.data_ptr())


def int8_group_matmul(x: Tensor, q: Tensor, scales: Tensor, zeros: Tensor, group: int) -> Tensor | None:
    """x [M, K] fp32 @ Wᵀ for W = scales * (q - zeros) per group of `group` columns (q uint8 [N, K],
    scales fp32 [K/group, N], zeros uint8 [K/group, N]); None where the kernel is unavailable."""
    lib = load("int8_group_gemm")
    if lib is None:
        return None
    x = x.to(torch.float32).contiguous()
    m, k = x.shape
    n = q.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib.llmquant_int8_group_gemm(_ptr(x), ctypes.c_int64(m), ctypes.c_int64(k), _ptr(q), ctypes.c_int64(n),
                                      _ptr(scales), _ptr(zeros), ctypes.c_int64(group), _ptr(y))
    return y if rc == 0 else None


def int8_group_dequant(q: Tensor, scales: Tensor, zeros: Tensor, group: int, n0: int, n1: int) -> Tensor | None:
    """Rows n0..n1 of W = scales * (q - zeros) as fp32 [n1 - n0, K], bit-identical to
    IntWeight.dequantize(); None where the kernel is unavailable."""
    lib = load("int8_group_gemm")
    if lib is None:
        return None
    n, k = q.shape
    out = torch.empty(n1 - n0, k, dtype=torch.float32)
    rc = lib.llmquant_int8_group_dequant(_ptr(q), ctypes.c_int64(n), ctypes.c_int64(k), _ptr(scales), _ptr(zeros),
                                         ctypes.c_int64(group), ctypes.c_int64(n0), ctypes.c_int64(n1), _ptr(out))
    return out if rc == 0 else None


def int4_dequant_columns(blocks: Tensor, scales: Tensor, zeros: Tensor, shift: int, group: int,
                         dtype: torch.dtype, split: bool = True) -> Tensor | None:
    """kernels.dequant_int4_columns in C (same arguments, fp32 result, bit-identical): blocks is
    the [K, nb, B/2] view of torch's packed bytes (Int4Layout.blocks, sliced over row blocks).
    None where the kernel is unavailable or the view is not the packed layout."""
    lib = load("int4_dequant")
    k, nb, half = blocks.shape
    if lib is None or dtype != torch.float32 or blocks.dtype != torch.uint8 or blocks.stride() != (half, k * half, 1):
        return None
    s = scales.float().contiguous()
    zp = (zeros.float() + shift).contiguous()
    out = torch.empty(k, nb * half * 2, dtype=torch.float32)
    rc = lib.llmquant_int4_dequant_cols(_ptr(blocks), ctypes.c_int64(k), ctypes.c_int64(nb), ctypes.c_int64(2 * half),
                                        ctypes.c_int(int(split)), _ptr(s), _ptr(zp), ctypes.c_int64(group), _ptr(out))
    return out if rc == 0 else None


def int8_dense_matmul(x: Tensor, q: Tensor, scales: Tensor, zeros: Tensor, group: int,
                      block_elems: int) -> Tensor | None:
    """x [M, K] @ Wᵀ for uint8 rows, dequantizing about `block_elems` weights at a time in C (fp32,
    bit-identical to IntWeight.dequantize) and using a plain matmul in x's dtype."""
    if load("int8_group_gemm") is None:
        return None
    n, k = q.shape
    step = max(1, block_elems // k)
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        w = int8_group_dequant(q, scales, zeros, group, r0, r1)
        if w is None:
            return None
        out[:, r0:r1] = x @ w.to(x.dtype).t()
    return out


def int4_matmul(x: Tensor, packed: Tensor, n: int, block: int, split: bool, scales: Tensor, zeros: Tensor,
                shift: int, group: int) -> Tensor | None:
    """x [M, K] @ Wᵀ in fp32 from torch's int4 layout in place (packed [N, K/2], row blocks of
    `block`); W = scales * (q - zeros) with the bytes holding q + shift; scales fp16/fp32 and
    zeros uint8/fp32 [K/group, N] as QuantLinear keeps them. None where unavailable."""
    lib = load("int4_gemm")
    if lib is None or scales.dtype not in (torch.float16, torch.float32) or zeros.dtype not in (torch.uint8, torch.float32):
        return None
    x = x.to(torch.float32).contiguous()
    m, k = x.shape
    y = torch.empty(m, n, dtype=torch.float32)
    rc = lib.llmquant_int4_gemm(_ptr(x), ctypes.c_int64(m), ctypes.c_int64(k), _ptr(packed), ctypes.c_int64(n),
                                ctypes.c_int64(block), ctypes.c_int(int(split)), _ptr(scales),
                                ctypes.c_int(int(scales.dtype == torch.float16)), _ptr(zeros),
                                ctypes.c_int(int(zeros.dtype == torch.uint8)), ctypes.c_float(shift),
                                ctypes.c_int64(group), _ptr(y))
    return y if rc == 0 else None
