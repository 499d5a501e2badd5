"""Evaluating stays within what `llmquant plan` says, and a 16-bit checkpoint is evaluated in
16-bit without a float32 copy of the model (even with its float32 check). A synthetic Llama
(random weights, bf16 on disk) is evaluated dense and as RTN W4, each in its own process; its
peak resident memory is compared with the plan's estimate for that step and with what a float32
copy would add. Not timed; margins are wide for a 2-core machine."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HIDDEN, INTERMEDIATE, LAYERS = 1024, 2816, 8

CHILD = """
import json, sys
from llmquant.eval.evaluate import EvalJob, evaluate_checkpoint
from llmquant.quantize.measure import measure_step

def job(ckpt):
    return EvalJob(checkpoint=ckpt, tokens_path=sys.argv[2], corpus="c", corpus_sha256="s", seqlen=256,
                   max_windows=2, dtype="bfloat16", device="cpu", check_windows=1, check_tolerance_pct=100.0,
                   compile_kernels=False)

evaluate_checkpoint(job(sys.argv[3]))  # the same code on a negligible model first: imports, kernels
with open("/proc/self/status") as f:
    before = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
with measure_step("cpu") as m:
    r = evaluate_checkpoint(job(sys.argv[1]))
print(json.dumps({"peak": r.peak_rss_bytes, "step_peak": m["quantize_peak_rss_bytes"], "before": before,
                  "check": r.check}))
"""


def rtn_w4(src: Path, out: Path, group: int) -> Path:
    from transformers import AutoTokenizer

    from llmquant.quantize.base import QuantizeContext
    from llmquant.quantize.lazy import lazy_model
    from llmquant.quantize.rtn.quantizer import RTNQuantizer
    from llmquant.quantize.rtn.config import RTNVariant

    out.mkdir()
    model, blocks = lazy_model(src)
    RTNQuantizer().quantize(model, RTNVariant(name="w4", method="rtn", bits=4, group_size=group), None, out,
                            QuantizeContext(tokenizer=AutoTokenizer.from_pretrained(src), blocks=blocks, model_dir=src))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("evalmem")
    dense = root / "dense"
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                      num_attention_heads=8, num_key_value_heads=8, vocab_size=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(dense)
    for f in tiny_model_dir.iterdir():
        if "token" in f.name:
            shutil.copy(f, dense / f.name)
    w4 = rtn_w4(dense, root / "w4", 128)
    tokens = root / "tokens.safetensors"
    save_file({"input_ids": torch.randint(0, 512, (1, 2048), generator=torch.Generator().manual_seed(0))},
              str(tokens))
    tiny_w4 = rtn_w4(tiny_model_dir, root / "tiny-w4", 32)
    return {"dense": dense, "w4": w4, "tokens": tokens, "root": root, "tiny": tiny_model_dir, "tiny-w4": tiny_w4}


def evaluate_in_own_process(ckpt: Path, tokens: Path, warmup: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(tokens), str(warmup)], capture_output=True,
                          text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def planned(models, tmp_path, variants: str) -> dict:
    from llmquant.plan import Machine, plan_for
    from llmquant.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(f"model: {{source: {models['dense']}, dtype: bfloat16, device: cpu}}\n"
                 "eval: {dataset: 'builtin:pydoc', seqlen: 256, isolate: false, check_windows: 1}\n"
                 f"variants: {variants}\n")
    plan = plan_for(load_recipe(p), Machine(1 << 40, 1 << 40, 1 << 40))
    return {s.name: s for s in plan.steps}


def test_evaluation_peak_within_the_plan_and_without_a_float32_copy(models, tmp_path):
    steps = planned(models, tmp_path, "[{name: w4, method: rtn, bits: 4, group_size: 128}]")
    dense = evaluate_in_own_process(models["dense"], models["tokens"], models["tiny"])
    w4 = evaluate_in_own_process(models["w4"], models["tokens"], models["tiny-w4"])
    assert dense["check"]["windows"] == 1 and w4["check"]["windows"] == 1
    bf16_bytes = sum(f.stat().st_size for f in models["dense"].glob("*.safetensors"))
    # measured peaks against the plan's estimate (its terms, a process allowance, ALLOCATOR_SLACK)
    assert dense["peak"] < steps["evaluate baseline"].host, (dense["peak"], steps["evaluate baseline"].host)
    assert w4["peak"] < steps["evaluate w4"].host, (w4["peak"], steps["evaluate w4"].host)
    # no float32 copy: what evaluating the bf16 model adds to the warmed-up process stays well
    # under the 2x its bf16 bytes a float32 load alone would take
    grew = dense["step_peak"] - dense["before"]
    assert grew < 1.5 * bf16_bytes, (grew, bf16_bytes)
