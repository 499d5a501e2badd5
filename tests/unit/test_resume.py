"""A run killed with SIGKILL resumes with the same command: finished steps are skipped and the
final outputs are identical to an uninterrupted run."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def recipe(tmp_path, model, name):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"""
name: {name}
model: {{source: {model}, dtype: float32, device: cpu}}
eval:
  dataset: {{source: "builtin:pydoc", split: test}}
  seqlen: 128
  max_windows: 60
  isolate: false
  latency: {{enabled: false}}
variants:
  - {{name: w8, method: rtn, bits: 8, group_size: 32}}
  - {{name: w4, method: rtn, bits: 4, group_size: 32}}
output: {{dir: {tmp_path / name}, board: {tmp_path / 'board.sqlite'}}}
""")
    return p


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sigkill_during_evaluation_then_resume(tmp_path, tiny_model_dir):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    killed = recipe(tmp_path, tiny_model_dir, "killed")
    run_dir = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "llmquant.cli", "run", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = run_dir / "variants" / "w4" / "manifest.json"  # w4 quantized: its evaluation comes next
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run ended before it could be killed during evaluation"
    assert not (run_dir / "variants" / "w4" / "result.json").exists(), "evaluation finished before the kill"
    assert (run_dir / "variants" / "w8" / "result.json").exists()
    assert not (run_dir / "results.json").exists()

    resumed = run(load_recipe(killed))
    by = {o.name: o for o in resumed.variants}
    assert resumed.baseline_reused
    assert not by["w8"].quantized_now and not by["w8"].evaluated_now  # finished steps skipped
    assert not by["w4"].quantized_now and by["w4"].evaluated_now  # only the killed step redone

    clean = run(load_recipe(recipe(tmp_path, tiny_model_dir, "clean")))
    for o, c in zip(resumed.variants, clean.variants):
        assert sha(o.checkpoint / "model.safetensors") == sha(c.checkpoint / "model.safetensors")
        assert o.result.ppl == c.result.ppl
    assert resumed.baseline.ppl == clean.baseline.ppl
    assert json.loads((run_dir / "results.json").read_text())["winner"] == \
        json.loads((tmp_path / "clean" / "results.json").read_text())["winner"]


def test_fresh_redoes_everything(tmp_path, tiny_model_dir):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    r = load_recipe(recipe(tmp_path, tiny_model_dir, "f"))
    run(r)
    again = run(r, fresh=True)
    assert not again.baseline_reused
    assert all(o.quantized_now and o.evaluated_now for o in again.variants)


def test_torn_result_file_is_redone(tmp_path, tiny_model_dir):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    r = load_recipe(recipe(tmp_path, tiny_model_dir, "t"))
    first = run(r)
    result = tmp_path / "t" / "variants" / "w4" / "result.json"
    result.write_text(result.read_text()[:40])  # as if cut off by a crash
    again = run(r)
    by = {o.name: o for o in again.variants}
    assert by["w4"].evaluated_now and not by["w8"].evaluated_now
    assert by["w4"].result.ppl == {o.name: o for o in first.variants}["w4"].result.ppl


@pytest.fixture(scope="module")
def four_block_model(tmp_path_factory):
    from tests.conftest import train_tiny_llama

    return train_tiny_llama(tmp_path_factory.mktemp("four") / "model", layers=4, steps=40)


def gptq_recipe(tmp_path, model, name):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"""
name: {name}
model: {{source: {model}, dtype: float32, device: cpu}}
calibration: {{dataset: {{source: "builtin:pydoc", split: train}}, n_samples: 32, seqlen: 128, seed: 0}}
eval:
  dataset: {{source: "builtin:pydoc", split: test}}
  seqlen: 128
  max_windows: 4
  isolate: false
  latency: {{enabled: false}}
variants:
  - {{name: g4, method: gptq, bits: 4, group_size: 32}}
output: {{dir: {tmp_path / name}, board: {tmp_path / 'board.sqlite'}}}
""")
    return p


def test_sigkill_during_gptq_resumes_from_the_last_finished_block(tmp_path, four_block_model):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    killed = gptq_recipe(tmp_path, four_block_model, "killed")
    work = tmp_path / "killed" / "variants" / "g4" / "work"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "llmquant.cli", "run", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    done: dict = {}
    while proc.poll() is None and time.time() < deadline:
        try:
            done = json.loads((work / "manifest.json").read_text()).get("blocks", {})
        except (OSError, ValueError):
            done = {}
        if "1" in done:  # blocks 0 and 1 solved and saved: kill in the middle of block 2
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "1" in done and "3" not in done, f"could not kill mid-quantization (saved blocks: {sorted(done)})"
    assert not (tmp_path / "killed" / "variants" / "g4" / "checkpoint").exists()  # nothing looks finished

    resumed = run(load_recipe(killed))
    summary = resumed.variants[0].summary
    finished = sorted(int(b) for b in done)
    assert summary["resumed_blocks"][:len(finished)] == finished  # not solved again
    assert set(summary["solved_blocks"]).isdisjoint(finished) and 3 in summary["solved_blocks"]
    assert not work.exists()  # resume state dropped once the checkpoint is final

    clean = run(load_recipe(gptq_recipe(tmp_path, four_block_model, "clean")))
    assert clean.variants[0].summary["resumed_blocks"] == []
    assert sha(resumed.variants[0].checkpoint / "model.safetensors") == \
        sha(clean.variants[0].checkpoint / "model.safetensors")
    assert resumed.variants[0].result.ppl == clean.variants[0].result.ppl


KILL_WHILE_STREAMING = """
import os, signal, sys
from llmquant.quantize.checkpoint_stream import CheckpointStream

real = CheckpointStream.add_module


def add_module(self, name, module, packed):
    if name.endswith(".2"):  # blocks 0 and 1 are in the output shards already
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, name, module, packed)


CheckpointStream.add_module = add_module
from llmquant.cli import app
app(["run", sys.argv[1]])
"""


def test_sigkill_during_the_streamed_checkpoint_write_resumes_bit_identical(tmp_path, four_block_model):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    def recipe_with_shards(name):
        p = gptq_recipe(tmp_path, four_block_model, name)
        p.write_text(p.read_text().replace("output: {", "output: {shard_size_mb: 0.01, "))  # ~10 KB shards
        return p

    killed = recipe_with_shards("killed")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_STREAMING, str(killed)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    assert proc.returncode == -signal.SIGKILL
    variant_dir = tmp_path / "killed" / "variants" / "g4"
    partial = [p for p in variant_dir.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and list(partial[0].glob(".shard-*.safetensors"))  # shards were on disk
    assert not (variant_dir / "checkpoint").exists()

    resumed = run(load_recipe(killed))
    summary = resumed.variants[0].summary
    assert summary["resumed_blocks"] == [0, 1, 2] and summary["solved_blocks"] == [3]
    clean = run(load_recipe(recipe_with_shards("clean")))
    a, b = resumed.variants[0].checkpoint, clean.variants[0].checkpoint
    files = sorted(p.name for p in b.iterdir() if p.name.startswith("model"))
    assert len(files) > 3 and "model.safetensors.index.json" in files
    assert sorted(p.name for p in a.iterdir() if p.name.startswith("model")) == files
    for f in files:
        assert sha(a / f) == sha(b / f), f
    assert resumed.variants[0].result.ppl == clean.variants[0].result.ppl
