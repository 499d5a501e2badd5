"""The peak memory an isolated evaluation records is the worker's own, not its parent's."""

import subprocess
import sys

from llmquant.eval.evaluate import peak_rss_bytes


def test_worker_peak_is_not_inherited_from_a_big_parent():
    big = bytearray(400 << 20)
    big[::4096] = b"\x01" * len(big[::4096])  # touch every page: ~400 MB resident here
    assert peak_rss_bytes() > 400 << 20
    code = "from llmquant.eval.evaluate import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < 300 << 20  # the child imported torch, but never held the parent's 400 MB
    del big
