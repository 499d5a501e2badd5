"""`llmquant serve` on a run directory: what it serves, dry runs for both engines, flag errors, the
after-run chat check and latency over HTTP through a real server process (stopped by each test)."""

import importlib.util
import json
import shutil
import socket

import pytest
import torch
from typer.testing import CliRunner

from llmquant.cli import app
from llmquant.errors import UserError
from llmquant.recipe import ServeSpec, load_recipe
from llmquant.serve.artifact import resolve_target
from llmquant.serve.engine import api_key, require, resolve_engine, start_background

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A run directory as `llmquant run` leaves it: base model, one RTN W4 variant (the winner), results.json
    naming the recipe, whose serve: section sets a few things."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmquant.quantize.base import QuantizeContext
    from llmquant.quantize.rtn.quantizer import RTNQuantizer
    from llmquant.quantize.rtn.config import RTNVariant

    root = tmp_path_factory.mktemp("serve-run")
    run = root / "run"
    ckpt = run / "variants" / "w4" / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    RTNQuantizer().quantize(model, RTNVariant(name="w4", method="rtn", bits=4, group_size=32), None, ckpt,
                            QuantizeContext(tokenizer=tok))
    shutil.copytree(tiny_model_dir, run / "base-model")
    recipe = root / "tiny.yaml"
    recipe.write_text(f"""
name: tiny
model: {{source: {tiny_model_dir}, device: cpu}}
eval: {{dataset: "builtin:pydoc", seqlen: 128}}
serve:
  after_run: check
  check_message: "What does pass do?"
  local: {{max_tokens: 64}}
  vllm: {{tensor_parallel_size: 2, gpu_memory_gib: 8}}
output: {{dir: run}}
""")
    (run / "results.json").write_text(json.dumps({
        "recipe": str(recipe), "winner": {"name": "w4", "reason": "smallest"},
        "variants": [{"name": "w4", "checkpoint": str(ckpt)}]}))
    return run


def test_resolve_target(run_dir, tiny_model_dir):
    t = resolve_target(run_dir)
    assert (t.name, t.checkpoint, t.info.format) == ("w4", run_dir / "variants/w4/checkpoint", "gptq-v1")
    b = resolve_target(run_dir, "baseline")
    assert b.checkpoint == run_dir / "base-model" and b.info.format == "hf"
    assert resolve_target(tiny_model_dir).name == "model"
    with pytest.raises(UserError, match="'w9' is not in .*; choose from w4, baseline"):
        resolve_target(run_dir, "w9")
    with pytest.raises(UserError, match="only for a run directory"):
        resolve_target(tiny_model_dir, "w4")


def test_no_winner_is_a_clear_error(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"winner": {"name": None, "reason": "none within 2 %"},
                                                       "variants": [{"name": "w3", "checkpoint": "x"}]}))
    with pytest.raises(UserError, match=r"picked no winner \(none within 2 %\); name one with --variant \(w3, baseline\)"):
        resolve_target(tmp_path)


def test_dry_run_vllm_takes_the_recipe_then_the_flags(run_dir):
    ckpt = run_dir / "variants/w4/checkpoint"
    res = invoke("serve", run_dir, "--engine", "vllm", "--dry-run")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert f"vllm serve {ckpt} --served-model-name w4 --host 127.0.0.1 --port 8000" in out
    assert "--tensor-parallel-size 2" in out  # from the recipe
    assert "--max-model-len 1024" in out and "fit: max_model_len 1024 (chosen)" in out
    assert "gptq_marlin" in out and "--quantization" not in out
    res = invoke("serve", run_dir, "--engine", "vllm", "--dry-run", "--tp", "1", "--api-key", "k")
    out = " ".join(res.output.split())
    assert "--tensor-parallel-size 1" in out and "VLLM_API_KEY=*** vllm serve" in out and " k " not in out


def test_dry_run_local(run_dir):
    res = invoke("serve", run_dir, "--engine", "local", "--dry-run", "--port", "9001")
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert (f"llmquant serve {run_dir / 'variants/w4/checkpoint'} --engine local --host 127.0.0.1 --port 9001 "
            "--name w4 --dtype auto --device auto --max-tokens 64") in out and "--compile memory: ~" in out
    # the memory line is plan's arithmetic for this checkpoint (its own test: test_plan.py)
    from llmquant.loading.runtime import resolve_dtype
    from llmquant.plan import checkpoint_estimate

    est = checkpoint_estimate(run_dir / "variants/w4/checkpoint", resolve_dtype("auto", "cpu"), 64 + 128)
    assert f"memory: ~{est.host / 2**30:.1f} GiB peak" in out and "(estimate, as `llmquant plan`)" in out


@pytest.mark.parametrize("args, message", [
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization: 1.5"),
    (["--engine", "fast"], "--engine: 'fast'"),
    (["--variant", "nope"], "'nope' is not in"),
])
def test_bad_flags_are_one_line_errors(run_dir, args, message):
    res = invoke("serve", run_dir, "--dry-run", *args)
    assert res.exit_code == 2 and message in " ".join(res.output.split())


def test_engine_and_key_resolution(monkeypatch):
    if importlib.util.find_spec("vllm") is None:
        assert resolve_engine("auto") == "local"
        with pytest.raises(UserError, match="vLLM is not installed"):
            resolve_engine("vllm")
    monkeypatch.delenv("LLMQUANT_API_KEY", raising=False)
    spec = ServeSpec(api_key_env="MY_KEY")
    with pytest.raises(UserError, match=r"\$MY_KEY is not set"):
        api_key(spec)
    monkeypatch.setenv("MY_KEY", "from-recipe")
    assert api_key(spec) == "from-recipe"
    monkeypatch.setenv("LLMQUANT_API_KEY", "from-env")
    assert api_key(spec) == "from-env" and api_key(spec, "flag") == "flag"
    assert api_key(ServeSpec()) == "from-env"
    with pytest.raises(UserError, match=r"serving needs no_such_pkg_x: pip install 'llmquant\[serve\]'"):
        require("fastapi", "no_such_pkg_x")


def greedy_chat_reference(path, message, max_tokens):
    from llmquant.formats.load import load_checkpoint
    from llmquant.serve.textgen import eos_ids

    model, tok, _ = load_checkpoint(path)
    text = tok.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False)
    ids, out, eos = tok(text, add_special_tokens=False).input_ids, [], eos_ids(model, tok)
    with torch.inference_mode():
        for _ in range(max_tokens):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt in eos:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_after_run_check_answers_one_chat_request(run_dir, monkeypatch):
    from llmquant.serve.command import after_run

    monkeypatch.delenv("LLMQUANT_API_KEY", raising=False)
    recipe = load_recipe(json.loads((run_dir / "results.json").read_text())["recipe"])
    said = []
    answer = after_run(recipe, run_dir, said.append)
    assert answer == greedy_chat_reference(run_dir / "variants/w4/checkpoint", "What does pass do?", 48)
    assert said[-1].startswith("serve check: 'What does pass do?' -> ")
    assert (run_dir / "logs" / "check-w4-local.log").read_text()


def test_latency_over_http_through_a_server_process(run_dir):
    from llmquant.serve.client import openai_client
    from llmquant.serve.http_latency import measure_http_latency

    target = resolve_target(run_dir)
    prompt = list(range(10, 26))
    with start_background(target, ServeSpec(), "local", key="k2") as srv:
        lat = measure_http_latency(openai_client(srv.base_url, "k2"), srv.model_name, [prompt, prompt[::-1]],
                                   decode_tokens=4, warmup=1)
        proc, port = srv.proc, int(srv.base_url.rsplit(":", 1)[1])
    assert proc.returncode == 0  # stopped cleanly by SIGINT
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert (lat.runs, lat.prompt_tokens, lat.decode_tokens) == (2, 16, 4)
    assert 0 < lat.ttft_ms_median <= lat.ttft_ms_p90
    assert lat.decode_tok_s > 0 and 0 < lat.itl_ms_median <= lat.itl_ms_p90


def test_run_measures_latency_over_http(tmp_path, tiny_model_dir):
    """A recipe with eval.latency.via: server: the same protocol fields, latency through the built-in server."""
    from llmquant.pipeline import run

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: tiny-http
model: {{source: {tiny_model_dir}, dtype: float32, device: cpu}}
eval:
  dataset: {{source: "builtin:pydoc", split: test}}
  seqlen: 128
  max_windows: 2
  isolate: false
  latency: {{prompt_tokens: 16, decode_tokens: 4, repeats: 2, warmup: 1, via: server}}
variants:
  - {{name: w4, method: rtn, bits: 4, group_size: 32}}
output: {{dir: {tmp_path / 'run'}, board: {tmp_path / 'board.sqlite'}}}
""")
    summary = run(load_recipe(recipe))
    for result in (summary.baseline, summary.variants[0].result):
        assert result.protocol.latency.endswith("over HTTP (local engine)")
        assert result.latency.runs == 2 and result.latency.itl_ms_median > 0
    assert (tmp_path / "run" / "logs" / "latency-w4-local.log").exists()
