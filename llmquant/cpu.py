"""What CPU this process runs on and what torch dispatches to there.

The capability (torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...) decides
torch's kernels, the int4 byte layout and which of our fast paths win; the hardware flags decide
whether bf16 matmuls are fast. `ATEN_CPU_CAPABILITY=avx2` makes torch dispatch as on a lesser
CPU (emulated): the flags still say what the silicon has, so results record both.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2, "ZVECTOR": 1, "VSX": 1, "SVE256": 1}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    capability: str  # what torch dispatches to in this process
    emulated: bool  # ATEN_CPU_CAPABILITY lowered it below what the hardware offers
    flags: tuple[str, ...]  # FLAGS this CPU has
    bf16_fast: bool  # bf16 matmuls run natively (AVX512-bf16 / AMX) at this dispatch level

    def as_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = " ".join(self.flags)
        return d

    def line(self) -> str:
        emu = " (emulated by ATEN_CPU_CAPABILITY)" if self.emulated else ""
        return (f"{self.model}; torch dispatch {self.capability}{emu}; flags {' '.join(self.flags) or 'none'}; "
                f"bf16 {'fast' if self.bf16_fast else 'slow (fp32 preferred)'}")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = next((set(ln.split(":", 1)[1].split()) for ln in text.splitlines() if ln.startswith("flags")), set())
    return model, flags


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_fast(capability: str, mkldnn_bf16: bool) -> bool:
    """bf16 is worth choosing where oneDNN has native bf16 and torch dispatches at AVX512 or above:
    under an emulated AVX2 dispatch we choose as an AVX2 machine (which has no bf16) would."""
    return mkldnn_bf16 and RANK.get(capability, 0) >= RANK["AVX512"]


def cpu_info() -> CpuInfo:
    model, flags = _cpuinfo()
    cap = torch.backends.cpu.get_cpu_capability()
    hw = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    emulated = bool(os.environ.get("ATEN_CPU_CAPABILITY")) and hw is not None and RANK.get(cap, 0) < RANK[hw]
    return CpuInfo(model, cap, emulated, tuple(f for f in FLAGS if f in flags), bf16_fast(cap, _mkldnn_bf16()))


def isolate_inductor_cache() -> None:
    """Give each dispatch capability its own torch.compile cache. Inductor compiles for the ISA
    ATEN_CPU_CAPABILITY selects, but its on-disk cache does not tell them apart: a kernel compiled
    under AVX512 and loaded by a process dispatching at AVX2 (or the reverse) was measured to give
    wrong results. Leaves an explicit TORCHINDUCTOR_CACHE_DIR alone. Child processes inherit it."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        base = default_cache_dir()
    except Exception:  # older/newer torch layouts: the documented default
        import getpass
        import tempfile
        base = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{base}-{torch.backends.cpu.get_cpu_capability().lower()}"


def environment(threads: bool = True) -> dict:
    """The fields every result's `env` records about the CPU."""
    info = cpu_info()
    d = {"cpu": info.model, "cpu_capability": info.capability, "cpu_emulated": info.emulated,
         "cpu_flags": " ".join(info.flags), "bf16_fast": info.bf16_fast}
    if threads:
        d["threads"] = torch.get_num_threads()
    return d


def emulation_problem(info: CpuInfo, environ=os.environ) -> str | None:
    """Why an emulated lesser CPU is incomplete: oneDNN picks its kernels by the silicon (AMX) unless
    capped too, and torch's bf16 attention then packs for AMX and refuses under AVX2 dispatch
    ("pack_vnni2 is only supported when avx512 is supported")."""
    if info.emulated and "amx_bf16" in info.flags and not environ.get("ONEDNN_MAX_CPU_ISA"):
        return (f"ATEN_CPU_CAPABILITY={environ.get('ATEN_CPU_CAPABILITY')} on an AMX CPU: also set "
                "ONEDNN_MAX_CPU_ISA=AVX2 (as an AVX2-only CPU has it), or bf16 attention fails")
    return None


def environment_lines(full: bool = False) -> list[str]:
    from . import __version__

    info = cpu_info()
    lines = [f"llmquant {__version__} (torch {torch.__version__}, Python {platform.python_version()})",
             f"cpu: {info.line()}"]
    problem = emulation_problem(info)
    if problem:
        lines.append(f"warning: {problem}")
    if full:
        from .formats.int4_layout import detect_layout

        layout = detect_layout()
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        lines += [f"int4 layout: {layout.name if layout else 'unknown (W4 keeps a nibble copy for prefill)'}",
                  f"threads: {torch.get_num_threads()} of {os.cpu_count()} CPUs; gpu: {gpu}",
                  f"torch.compile cache: {os.environ.get('TORCHINDUCTOR_CACHE_DIR', '(torch default)')}"]
    return lines
