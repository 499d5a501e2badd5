"""What this machine offers a run: host memory, GPU memory, free disk where the run writes."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..serve.fit import GpuMemory


@dataclass(frozen=True)
class Machine:
    ram_total: int  # bytes this process may use: MemTotal, or a smaller cgroup limit
    ram_available: int
    disk_free: int  # in the run directory (its nearest existing parent)
    gpus: tuple[GpuMemory, ...] = field(default_factory=tuple)
    cpu: str = ""


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _cgroup_limit() -> int | None:
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def host_memory() -> tuple[int, int]:
    info = _meminfo()
    total = info.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = info.get("MemAvailable", total)
    limit = _cgroup_limit()
    if limit is not None:
        total, available = min(total, limit), min(available, limit)
    return total, available


def free_disk(path: Path) -> int:
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def this_machine(run_dir: Path, cuda: bool) -> Machine:
    from ..cpu import cpu_info

    total, available = host_memory()
    gpus: tuple[GpuMemory, ...] = ()
    if cuda:
        from ..serve.vllm import visible_gpus

        gpus = tuple(visible_gpus())
    return Machine(total, available, free_disk(run_dir), gpus, cpu_info().line())
