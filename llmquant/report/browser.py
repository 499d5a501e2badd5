"""Headless Chromium for looking at a report the way a reader will (the browser test, the screenshot
script). Nothing in the library needs it; it is found on PATH or not at all."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# no network, no first-run or background work: the page must render from the file alone
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    return next((p for n in NAMES if (p := shutil.which(n))), None)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="llmquant-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=False)


def dump_dom(url: str, timeout: float = 90) -> str:
    """The DOM after the page's scripts ran, serialised."""
    res = _run(["--dump-dom", url], timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res.stdout


def screenshot(url: str, out: Path, width: int = 1280, height: int = 2400, timeout: float = 90) -> Path:
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    res = _run([f"--window-size={width},{height}", f"--screenshot={out}", url], timeout)
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium --screenshot failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return out
