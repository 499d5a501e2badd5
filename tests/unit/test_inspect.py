"""`llmquant inspect`: checkpoint facts from headers, and the vLLM pre-flight rules (each
blocker or warning with its reason), on checkpoints written in the tools' layouts and on
synthetic module tables with real model shapes."""

import json

import pytest
from typer.testing import CliRunner

from llmquant.cli import app
from llmquant.formats.modules import ModuleQuant
from llmquant.formats.vllm_compat import vllm_verdict
from llmquant.inspect import inspect_path
from tests.foreign_writers import write_awq, write_compressed_tensors, write_gptq


def codes(report_or_verdict):
    v = getattr(report_or_verdict, "vllm", report_or_verdict)
    return {f.code: f for f in v.findings}


def test_gptq_4bit_symmetric_is_marlin(tmp_path, tiny_model_dir):
    ckpt, _ = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, group_size=32)
    r = inspect_path(ckpt)
    assert (r.method, r.format, r.bits, r.group_sizes, r.n_quantized) == ("gptq", "gptq-v1", [4], [32], 21)
    assert r.model_dtype == "float16" and r.size_bytes == (ckpt / "model.safetensors").stat().st_size
    assert {q["modules"] for q in r.quantized} >= {"model.layers.*.self_attn.q_proj", "model.layers.*.mlp.down_proj"}
    assert r.vllm.quantization == "gptq_marlin" and r.vllm.kernel == "marlin" and r.vllm.servable
    # the tiny model's 64-wide inputs are under marlin's min_thread_k of 128: exllama fallback, fp16
    f = codes(r)["marlin-shape-fallback"]
    assert f.severity == "warning" and "min_thread_k 128" in f.reason and "exllama" in f.reason


def test_gptq_v2_zero_points_blocker_off_marlin(tmp_path, tiny_model_dir):
    ckpt, _ = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, sym=False, v2=True)
    r = inspect_path(ckpt)
    assert r.format == "gptq-v2" and r.vllm.quantization == "gptq" and not r.vllm.servable
    f = codes(r)["gptq-v2-zeros"]
    assert f.severity == "blocker" and "PR #26092" in f.reason and "zero - 1" in f.reason
    assert codes(r)["gptq-asym-no-marlin"].severity == "warning"
    sym, _ = write_gptq(tiny_model_dir, tmp_path / "s", bits=4, sym=True, v2=True)
    assert codes(inspect_path(sym))["gptq-v2-zeros"].severity == "warning"  # marlin ignores stored zeros


def test_gptq_3bit_has_no_marlin(tmp_path, tiny_model_dir):
    ckpt, _ = write_gptq(tiny_model_dir, tmp_path / "g", bits=3, group_size=32)
    r = inspect_path(ckpt)
    assert r.vllm.quantization == "gptq" and r.vllm.dtype == "float16 only" and r.vllm.servable
    assert "no marlin kernel" in codes(r)["gptq-3bit-no-marlin"].reason


def test_gptq_dynamic_and_fused_groups(tmp_path, tiny_model_dir):
    ckpt, _ = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, group_size=32,
                         dynamic={r"+:.*\.q_proj": {"bits": 8}, r"-:.*\.up_proj": {}})
    r = inspect_path(ckpt)
    assert r.bits == [4, 8] and "model.layers.*.mlp.up_proj" in r.dense
    c = codes(r)
    assert c["fused-mixed-schemes"].severity == "blocker" and "self_attn.qkv_proj" in c["fused-mixed-schemes"].reason
    assert c["fused-partially-quantized"].severity == "blocker" and "mlp.gate_up_proj" in c["fused-partially-quantized"].reason


def test_group_size_per_gpu_shard(tmp_path, tiny_model_dir):
    ckpt, _ = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, group_size=64)
    assert "group-size-shape" not in codes(inspect_path(ckpt))
    f = codes(inspect_path(ckpt, tp=2))["group-size-shape"]  # o_proj: 64 inputs -> 32 per GPU
    assert f.severity == "blocker" and "group size 64 does not divide in_features 32 per GPU" in f.reason
    assert "model.layers.0.self_attn.o_proj" in f.modules and "model.layers.0.self_attn.q_proj" not in f.modules


def test_awq_gemv_blocker(tmp_path, tiny_model_dir):
    ckpt, _ = write_awq(tiny_model_dir, tmp_path / "a", version="gemv")
    r = inspect_path(ckpt)
    assert r.format == "awq-gemv" and not r.vllm.servable
    assert "no GEMV reader" in codes(r)["awq-gemv"].reason
    assert r.quantized[0]["shape"][1] in (64, 128)  # GEMV shapes read the GEMV way


def test_awq_bf16_model_with_fp16_only_kernel(tmp_path, tiny_model_dir):
    ckpt, _ = write_awq(tiny_model_dir, tmp_path / "a", group_size=32, dtype="bfloat16")
    t4 = inspect_path(ckpt, sm=75)  # below 8.0: no awq_marlin, the awq kernel is fp16 only
    assert t4.vllm.quantization == "awq" and not t4.vllm.servable
    f = codes(t4)["bf16-model-fp16-kernel"]
    assert f.severity == "blocker" and "bfloat16" in f.reason and "--dtype half" in f.reason
    a100 = inspect_path(ckpt, sm=80)  # awq_marlin, but the tiny shapes fall back to the awq kernel
    assert a100.vllm.quantization == "awq_marlin" and "bf16-model-fp16-kernel" in codes(a100)
    fp16, _ = write_awq(tiny_model_dir, tmp_path / "b", group_size=32)
    assert inspect_path(fp16, sm=75).vllm.servable


def test_awq_partially_quantized_fused_layer(tmp_path, tiny_model_dir):
    ckpt, _ = write_awq(tiny_model_dir, tmp_path / "a", group_size=32, skip=("k_proj",))
    r = inspect_path(ckpt)
    assert "model.layers.*.self_attn.k_proj" in r.dense
    assert codes(r)["fused-partially-quantized"].severity == "blocker"


def test_compressed_tensors_asym_w8(tmp_path, tiny_model_dir):
    ckpt, _ = write_compressed_tensors(tiny_model_dir, tmp_path / "c", bits=8, group_size=32, sym=False)
    r = inspect_path(ckpt)
    assert r.format == "ct-pack-quantized" and r.bits == [8] and r.sym is False
    assert codes(r)["ct-w8-asym"].severity == "blocker"
    assert "ct-w8-asym" not in codes(inspect_path(ckpt, sm=90))  # machete on Hopper
    w4, _ = write_compressed_tensors(tiny_model_dir, tmp_path / "d", bits=4, group_size=32, sym=True)
    assert inspect_path(w4).vllm.servable and inspect_path(w4).vllm.quantization == "compressed-tensors"


def smollm2_like(bits=4, group=64, sym=True):
    """SmolLM2-135M's 30 blocks: hidden 576, intermediate 1536, 9 heads / 3 KV heads of 64."""
    shapes = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (192, 576), "self_attn.v_proj": (192, 576),
              "self_attn.o_proj": (576, 576), "mlp.gate_proj": (1536, 576), "mlp.up_proj": (1536, 576),
              "mlp.down_proj": (576, 1536)}
    return [ModuleQuant(f"model.layers.{i}.{k}", inf, outf, bits, group, sym)
            for i in range(30) for k, (outf, inf) in shapes.items()]


def test_real_shapes_smollm2_group_128_and_marlin_k():
    mods = smollm2_like(group=128)
    v = vllm_verdict("gptq", "gptq-v1", {"bits": 4, "group_size": 128, "sym": True, "desc_act": False},
                     mods, [], "float16")
    f = codes(v)["group-size-shape"]
    assert f.severity == "blocker" and "group size 128 does not divide in_features 576" in f.reason
    v64 = vllm_verdict("gptq", "gptq-v1", {"bits": 4, "group_size": 64, "sym": True, "desc_act": False},
                       smollm2_like(group=64), [], "bfloat16")
    c = codes(v64)
    assert "group-size-shape" not in c and v64.quantization == "gptq_marlin"
    assert "input 576 per GPU is not a multiple of marlin's min_thread_k 128" in c["marlin-shape-fallback"].reason
    assert "model.layers.3.mlp.down_proj" not in c["marlin-shape-fallback"].modules  # 1536 inputs are fine
    assert c["bf16-model-fp16-kernel"].severity == "blocker"  # the exllama fallback is fp16 only


def test_cli_json_and_strict(tmp_path, tiny_model_dir):
    ckpt, _ = write_gptq(tiny_model_dir, tmp_path / "g", bits=4, sym=False, v2=True)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(ckpt), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["vllm"]["servable"] is False and data["format"] == "gptq-v2"
    assert any(f["code"] == "gptq-v2-zeros" and f["severity"] == "blocker" for f in data["vllm"]["findings"])
    res = runner.invoke(app, ["inspect", str(ckpt), "--strict"])
    assert res.exit_code == 1 and "gptq-v2-zeros" in res.output
    res = runner.invoke(app, ["inspect", str(ckpt), "--format", "yaml"])
    assert res.exit_code == 2 and "--format: 'yaml' is not allowed" in res.output


@pytest.mark.parametrize("method", ["none"])
def test_dense_checkpoint(tiny_model_dir, method):
    r = inspect_path(tiny_model_dir)
    assert r.method == method and r.vllm.servable and r.n_quantized == 0


def test_tensor_parallel_head_split():
    from llmquant.inspect import head_findings

    smollm2 = {"num_attention_heads": 9, "num_key_value_heads": 3}
    assert {f.code for f in head_findings(smollm2, 2)} == {"tp-heads", "tp-kv-heads"}
    assert head_findings(smollm2, 3) == []
    assert head_findings({"num_attention_heads": 32, "num_key_value_heads": 8}, 16) == []  # KV heads replicated
