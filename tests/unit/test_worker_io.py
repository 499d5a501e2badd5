"""The worker progress protocol (llmquant/worker_io.py) and the cached steps (llmquant/steps.py)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from llmquant.steps import cached_dir, cached_file, cached_result
from llmquant.worker_io import run_relayed


class Recorder:
    def __init__(self):
        self.events: list[tuple] = []

    @contextmanager
    def task(self, description, total):
        self.events.append(("start", description, total))
        yield lambda n=1, note=None: self.events.append(("advance", description, n, note))
        self.events.append(("end", description))

    def message(self, text):
        self.events.append(("message", text))


WORKER = '''
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import worker_common as wc
progress = wc.progress_channel()
print("library chatter goes to the log")
progress.message("pack extension not available")
with progress.task("quantize", 2) as advance:
    advance(1, "block 1/2")
    advance(1)
print("not json either")
'''


def test_a_workers_message_events_reach_the_progress_output(tmp_path):
    """A peer worker (through worker_common, as gptqmodel_worker does) reports a message, a task
    and its steps: all of them come back on our Progress; its other output lands in the log."""
    import llmquant.peers

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    progress = Recorder()
    log = tmp_path / "worker.log"
    rc = run_relayed([sys.executable, str(script), str(Path(llmquant.peers.__file__).parent)], {}, log, progress,
                     cwd=tmp_path)
    assert rc == 0, log.read_text()
    assert progress.events == [("message", "pack extension not available"), ("start", "quantize", 2),
                               ("advance", "quantize", 1, "block 1/2"), ("advance", "quantize", 1, None),
                               ("end", "quantize")]
    assert "library chatter" in log.read_text()


def test_tasks_a_dead_worker_left_open_are_closed(tmp_path):
    script = tmp_path / "w.py"
    script.write_text('import json, sys\nprint(json.dumps({"event": "start", "task": "t", "total": None}))\n'
                      'print(json.dumps({"event": "message", "text": "bye"}))\nsys.exit(3)\n')
    progress = Recorder()
    assert run_relayed([sys.executable, str(script)], {}, tmp_path / "log", progress) == 3
    assert progress.events == [("start", "t", None), ("message", "bye"), ("end", "t")]


def test_cached_result_reuses_a_record_with_the_same_key(tmp_path):
    calls = []
    path = tmp_path / "r" / "result.json"
    assert cached_result(path, "k1", lambda: calls.append(1) or {"x": 1}) == ({"x": 1}, True)
    assert cached_result(path, "k1", lambda: calls.append(1) or {"x": 2}) == ({"x": 1}, False)
    assert cached_result(path, "k1", lambda: calls.append(1) or {"x": 3}, fresh=True) == ({"x": 3}, True)
    assert cached_result(path, "k2", lambda: calls.append(1) or {"x": 4}) == ({"x": 4}, True)
    assert len(calls) == 3


def test_cached_dir_writes_the_manifest_after_the_directory(tmp_path):
    target, manifest = tmp_path / "v" / "checkpoint", tmp_path / "v" / "manifest.json"

    def build(tmp: Path) -> dict:
        assert not manifest.exists()  # a stale manifest is gone before the build starts
        (tmp / "w.bin").write_bytes(b"x")
        return {"summary": {"n": 1}}

    m, built = cached_dir(target, manifest, "k", build)
    assert built and m == {"key": "k", "summary": {"n": 1}} and (target / "w.bin").is_file()
    assert cached_dir(target, manifest, "k", build) == (m, False)

    def crash(tmp: Path) -> dict:
        raise RuntimeError("interrupted")

    try:
        cached_dir(target, manifest, "k2", crash)
    except RuntimeError:
        pass
    assert not manifest.exists()  # an interrupted step never looks finished
    assert cached_dir(target, manifest, "k2", build)[1]


def test_cached_file_with_a_record(tmp_path):
    f, rec = tmp_path / "t.bin", tmp_path / "t.json"
    assert cached_file(f, lambda: b"a", key="s1", record=rec)
    assert not cached_file(f, lambda: b"b", key="s1", record=rec) and f.read_bytes() == b"a"
    assert cached_file(f, lambda: b"c", key="s2", record=rec) and f.read_bytes() == b"c"
    assert not cached_file(tmp_path / "t.bin", lambda: b"d")
