"""Bad input everywhere: each case fails with one line naming the thing, exit code 2, no
traceback, nothing half-written and no leaderboard rows (issue 8's table)."""

import errno
import os
import shutil
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from llmquant.cli import app

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def no_rows(board):
    if not board.exists():
        return True
    with sqlite3.connect(board) as con:
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0


def recipe_for(tmp_path, model, eval_source="'builtin:pydoc'", variants="[{name: a, method: rtn, bits: 4, group_size: 32}]"):
    p = tmp_path / "r.yaml"
    p.write_text(f"model: {{source: {model}, dtype: float32, device: cpu}}\n"
                 f"eval: {{dataset: {eval_source}, seqlen: 64, max_windows: 2, isolate: false, latency: {{enabled: false}}}}\n"
                 f"variants: {variants}\n"
                 f"output: {{dir: {tmp_path / 'run'}, board: {tmp_path / 'board.sqlite'}}}\n")
    return p


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors(tmp_path, tiny_model_dir):
    m = copy_model(tiny_model_dir, tmp_path / "m")
    f = m / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = error_line(run_cli("run", recipe_for(tmp_path, m)))
    assert "corrupted or truncated safetensors" in line and str(m) in line
    assert no_rows(tmp_path / "board.sqlite")


def test_missing_tokenizer(tmp_path, tiny_model_dir):
    m = copy_model(tiny_model_dir, tmp_path / "m")
    for f in m.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    line = error_line(run_cli("run", recipe_for(tmp_path, m)))
    assert "no tokenizer files" in line and str(m) in line


def test_pickled_weights_refused(tmp_path, tiny_model_dir):
    m = copy_model(tiny_model_dir, tmp_path / "m")
    (m / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model.embed_tokens.weight": Evil()}, m / "pytorch_model.bin")
    line = error_line(run_cli("run", recipe_for(tmp_path, m)))
    assert "refusing to load pickled weights" in line and not marker.exists()


def test_unsupported_gguf_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "bogus.gguf"
    w = gguf.GGUFWriter(str(path), "bogusarch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", torch.zeros(8, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    line = error_line(run_cli("validate", recipe_for(tmp_path, path)))
    assert "bogusarch" in line or "not supported" in line, line
    assert str(path) in line or "model.source" in line


def test_missing_dataset_file(tmp_path, tiny_model_dir):
    line = error_line(run_cli("validate", recipe_for(tmp_path, tiny_model_dir, eval_source=str(tmp_path / "none.txt"))))
    assert "eval.dataset.source" in line and "none.txt not found" in line


def test_binary_corpus(tmp_path, tiny_model_dir):
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 10)
    line = error_line(run_cli("run", recipe_for(tmp_path, tiny_model_dir, eval_source=str(tmp_path / "bin.txt"))))
    assert "looks binary" in line


def test_nan_weights(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    m = copy_model(tiny_model_dir, tmp_path / "m")
    sd = load_file(str(m / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(sd, str(m / "model.safetensors"), metadata={"format": "pt"})
    line = error_line(run_cli("run", recipe_for(tmp_path, m)))
    assert "weight model.layers.1.mlp.up_proj.weight contains NaN or Inf" in line and str(m) in line
    assert no_rows(tmp_path / "board.sqlite")


def partials(tmp_path):
    return [p for p in (tmp_path / "run").rglob("*") if ".partial" in p.name]


def test_disk_full_while_saving(tmp_path, tiny_model_dir, monkeypatch):
    from llmquant.formats.stream import StreamedShards

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StreamedShards, "_close", full)  # the streamed writer's shard is full
    line = error_line(run_cli("run", recipe_for(tmp_path, tiny_model_dir)))
    assert "disk full while writing" in line and "nothing was kept" in line
    assert not (tmp_path / "run" / "variants" / "a" / "checkpoint").exists()
    assert not (tmp_path / "run" / "variants" / "a" / "manifest.json").exists()
    assert partials(tmp_path) == [] and no_rows(tmp_path / "board.sqlite")


def test_out_of_memory_during_quantization(tmp_path, tiny_model_dir, monkeypatch):
    from llmquant.quantize.rtn import quantizer as rtn

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(rtn, "quantize_rtn", oom)
    line = error_line(run_cli("run", recipe_for(tmp_path, tiny_model_dir)))
    assert "out of memory while quantizing" in line and "calibration.n_samples" in line
    assert partials(tmp_path) == []
