"""The vLLM engine without vLLM: the `vllm serve` argument list from the artifact, the sizes the fit
check reads from safetensors headers, and the fit check wired to a real packed checkpoint."""

import json
from pathlib import Path

import pytest

from llmquant.errors import UserError
from llmquant.formats.load import CheckpointInfo
from llmquant.recipe import ServeSpec
from llmquant.serve import vllm
from llmquant.serve.artifact import ServeTarget, model_shape, resolve_target, tensor_table, weight_bytes
from llmquant.serve.fit import GiB, GpuMemory

CMD = ["/opt/venv/bin/vllm"]


@pytest.fixture(scope="module")
def rtn_checkpoint(tmp_path_factory, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmquant.quantize.base import QuantizeContext
    from llmquant.quantize.rtn.quantizer import RTNQuantizer
    from llmquant.quantize.rtn.config import RTNVariant

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path_factory.mktemp("rtn-vllm") / "w4" / "checkpoint"
    RTNQuantizer().quantize(model, RTNVariant(name="w4", method="rtn", bits=4, group_size=32), None, out,
                            QuantizeContext(tokenizer=tok))
    return out


def fake_target(tmp_path, quant_config, fmt="x"):
    return ServeTarget(tmp_path, "m", None, CheckpointInfo(tmp_path, fmt, quant_config.get("quant_method", "none"),
                                                           quant_config=quant_config))


def spec(**vllm_kw):
    return ServeSpec(vllm=vllm_kw)


# -- shapes and sizes ---------------------------------------------------------------------------------

def test_model_shape_from_config(tiny_model_dir):
    s = model_shape(tiny_model_dir)
    # conftest's tiny Llama: 3 layers, hidden 64, 4 heads (16 each), 2 KV heads, MLP 128, tied
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.intermediate) == (3, 64, 4, 2, 16, 128)
    assert s.tied and s.max_positions == 1024 and s.vocab == 512


# per layer: q 64x64, k 32x64, v 32x64, o 64x64, gate/up 128x64, down 64x128 -> 36,864 weights; 2 norms of 64
LINEARS = {"q": (64, 64), "k": (64, 32), "v": (64, 32), "o": (64, 64), "gate": (64, 128), "up": (64, 128),
           "down": (128, 64)}  # (in, out)


def test_weight_bytes_of_the_dense_model_at_the_served_dtype(tiny_model_dir):
    w = weight_bytes(tensor_table(tiny_model_dir), 3, float_bytes=2)  # stored fp32, served fp16
    assert w.per_layer == ((36_864 + 128) * 2,) * 3
    assert w.embed == 512 * 64 * 2
    assert w.head == 0  # tied: no lm_head tensor
    assert w.final == 64 * 2  # model.norm


def test_weight_bytes_of_the_packed_checkpoint(rtn_checkpoint):
    # GPTQ v1, 4 bits, group 32, per Linear (in, out): qweight int32 [in/8, out], qzeros int32 [in/32, out/8],
    # scales fp16 [in/32, out], g_idx int32 [in]
    per_layer = 2 * 64 * 2  # the two norms, fp16
    for i, o in LINEARS.values():
        per_layer += (i // 8) * o * 4 + (i // 32) * (o // 8) * 4 + (i // 32) * o * 2 + i * 4
    w = weight_bytes(tensor_table(rtn_checkpoint), 3, float_bytes=2)
    assert w.per_layer == (per_layer,) * 3
    assert w.embed == 512 * 64 * 2


def test_inflight_4bit_estimate(tiny_model_dir):
    w = weight_bytes(tensor_table(tiny_model_dir), 3, float_bytes=2, inflight_4bit=True)
    # each Linear: n/2 bytes + 4 bytes per 64 weights; norms stay fp16
    per_layer = sum(i * o // 2 + (i * o // 64) * 4 for i, o in LINEARS.values()) + 2 * 64 * 2
    assert w.per_layer == (per_layer,) * 3
    assert w.embed == 512 * 64 * 2  # the embedding is not quantized


# -- the argument list ------------------------------------------------------------------------------------

def test_gptq_checkpoint_gets_no_quantization_flag(rtn_checkpoint):
    t = resolve_target(rtn_checkpoint)
    assert t.name == "w4"  # variants/<name>/checkpoint
    argv, notes = vllm.build_argv(t, ServeSpec(), 1024, "w4", 8000, command=CMD)
    assert argv == [*CMD, "serve", str(rtn_checkpoint), "--served-model-name", "w4", "--host", "127.0.0.1",
                    "--port", "8000", "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "1",
                    "--pipeline-parallel-size", "1", "--max-model-len", "1024"]
    assert any("gptq_marlin" in n for n in notes)


@pytest.mark.parametrize("qc, note", [
    ({"quant_method": "gptq", "bits": 3, "sym": True, "group_size": 64}, "slower gptq kernel"),
    ({"quant_method": "gptq", "bits": 4, "sym": False, "group_size": 64}, "slower gptq kernel"),
    ({"quant_method": "gptq", "bits": 8, "sym": True, "group_size": -1}, "gptq_marlin"),
])
def test_gptq_kernel_notes(tmp_path, qc, note):
    argv, notes = vllm.build_argv(fake_target(tmp_path, qc), ServeSpec(), None, "m", 8000, command=CMD)
    assert "--quantization" not in argv and "--max-model-len" not in argv
    assert note in " ".join(notes)


def test_awq_is_served_in_half_precision(tmp_path):
    qc = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"}
    argv, _ = vllm.build_argv(fake_target(tmp_path, qc), ServeSpec(), None, "m", 8000, command=CMD)
    assert argv[argv.index("--dtype") + 1] == "half" and "--quantization" not in argv
    argv, _ = vllm.build_argv(fake_target(tmp_path, qc), spec(dtype="bfloat16"), None, "m", 8000, command=CMD)
    assert argv[argv.index("--dtype") + 1] == "bfloat16"  # an explicit choice is kept (awq_marlin takes it)


def test_bitsandbytes_flags(tmp_path):
    pre = fake_target(tmp_path, {"quant_method": "bitsandbytes", "load_in_4bit": True})
    argv, _ = vllm.build_argv(pre, ServeSpec(), None, "m", 8000, command=CMD)
    assert argv[argv.index("--quantization") + 1] == "bitsandbytes"
    dense = fake_target(tmp_path, {})
    argv, notes = vllm.build_argv(dense, ServeSpec(), None, "m", 8000, command=CMD)
    assert "--quantization" not in argv
    argv, notes = vllm.build_argv(dense, spec(quantization="bitsandbytes"), None, "m", 8000, command=CMD)
    assert argv[argv.index("--quantization") + 1] == "bitsandbytes" and "in flight" in notes[0]
    with pytest.raises(UserError, match="already quantized with 'gptq'"):
        vllm.build_argv(fake_target(tmp_path, {"quant_method": "gptq", "bits": 4}), spec(quantization="bitsandbytes"),
                        None, "m", 8000, command=CMD)


def test_parallel_and_other_flags(tmp_path):
    s = ServeSpec(host="0.0.0.0", port=9000, vllm=dict(
        tensor_parallel_size=4, pipeline_parallel_size=2, distributed_executor_backend="ray", max_num_seqs=8,
        max_num_batched_tokens=2048, kv_cache_dtype="fp8", enforce_eager=True, gpu_memory_utilization=0.85,
        extra_args=["--seed", "1"]))
    argv, notes = vllm.build_argv(fake_target(tmp_path, {}), s, 4096, "big", 9000, trust_remote_code=True, command=CMD)
    pairs = dict(zip(argv[3::2], argv[4::2]))  # after: vllm serve PATH
    assert pairs["--host"] == "0.0.0.0" and pairs["--port"] == "9000"
    assert pairs["--tensor-parallel-size"] == "4" and pairs["--pipeline-parallel-size"] == "2"
    assert pairs["--gpu-memory-utilization"] == "0.85"
    i = argv.index
    assert argv[i("--distributed-executor-backend") + 1] == "ray"
    assert argv[i("--max-num-seqs") + 1] == "8" and argv[i("--max-num-batched-tokens") + 1] == "2048"
    assert argv[i("--kv-cache-dtype") + 1] == "fp8" and argv[i("--max-model-len") + 1] == "4096"
    assert "--enforce-eager" in argv and "--trust-remote-code" in argv and argv[-2:] == ["--seed", "1"]
    assert any("ray start --head" in n for n in notes)


def test_gguf_is_refused(tmp_path):
    t = ServeTarget(tmp_path / "m.gguf", "m", None, CheckpointInfo(tmp_path / "m.gguf", "gguf", "gguf"))
    with pytest.raises(UserError, match="--engine local"):
        vllm.build_argv(t, ServeSpec(), None, "m", 8000, command=CMD)


# -- fit check on a real checkpoint ---------------------------------------------------------------------

def test_prepare_chooses_max_model_len_and_keeps_the_key_out_of_argv(rtn_checkpoint):
    t = resolve_target(rtn_checkpoint)
    launch = vllm.prepare(t, ServeSpec(), "w4", 8000, "sekret", gpus=[GpuMemory(GiB, GiB)])
    # tiny model: weights < 1 MiB, overhead ~0.5 GiB, KV 2 x 3 x 2 x 16 x 2 = 384 B/token -> capped at 1024
    assert launch.plan.stages[0].kv_per_token == 384
    assert launch.plan.max_model_len == 1024 and launch.plan.chosen
    assert launch.argv[launch.argv.index("--max-model-len") + 1] == "1024"
    assert "sekret" not in " ".join(launch.argv) and launch.env == {"VLLM_API_KEY": "sekret"}
    assert any(n.startswith("fit: max_model_len 1024 (chosen)") for n in launch.notes)


def test_prepare_refuses_a_card_that_is_too_small(rtn_checkpoint):
    t = resolve_target(rtn_checkpoint)
    # 0.5 GiB x 0.5 = 0.25 GiB budget; a fixed 0.3 GiB overhead alone exceeds it
    with pytest.raises(UserError, match=r"exceed the budget of 0\.25 GiB"):
        vllm.prepare(t, spec(gpu_memory_gib=0.5, gpu_memory_utilization=0.5, overhead_gib=0.3), "w4", 8000, None,
                     gpus=[])


def test_prepare_without_a_gpu_needs_a_size(rtn_checkpoint):
    t = resolve_target(rtn_checkpoint)
    with pytest.raises(UserError, match="gpu_memory_gib"):
        vllm.prepare(t, ServeSpec(), "w4", 8000, None, gpus=[])
    launch = vllm.prepare(t, spec(fit_check=False, max_model_len=512), "w4", 8000, None, gpus=[])
    assert launch.plan is None and launch.argv[launch.argv.index("--max-model-len") + 1] == "512"


def test_suggested_max_model_len_from_vllms_refusal():
    text = ("ValueError: To serve at least one request with the models's max seq len (40960), (5.62 GiB KV cache is "
            "needed, which is larger than the available KV cache memory (4.50 GiB). Based on the available memory, "
            "the estimated maximum model length is 32,760. Try increasing `gpu_memory_utilization` or decreasing "
            "`max_model_len` when initializing the engine.")
    assert vllm.suggested_max_model_len(text) == 32752  # whole 16-token blocks
    assert vllm.suggested_max_model_len("CUDA out of memory") is None


def test_gpus_for_planning():
    g = GpuMemory(24 * GiB, 20 * GiB)
    assert vllm.gpus_for(ServeSpec().vllm, [g]) == [g]
    planned = vllm.gpus_for(spec(gpu_memory_gib=16, tensor_parallel_size=2).vllm, [g])
    assert planned == [GpuMemory(16 * GiB, 16 * GiB)] * 2
    ray = vllm.gpus_for(spec(tensor_parallel_size=2, pipeline_parallel_size=2,
                             distributed_executor_backend="ray").vllm, [g, g])
    assert ray == [g] * 4  # the other machine's GPUs assumed like ours


@pytest.mark.vllm
def test_vllm_reads_our_checkpoint(rtn_checkpoint):
    """Where vLLM and a GPU are present: vLLM's own config code accepts our GPTQ v1 checkpoint."""
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM's quantization configs need a CUDA GPU")
    from vllm.engine.arg_utils import EngineArgs

    cfg = EngineArgs(model=str(rtn_checkpoint), max_model_len=1024).create_model_config()
    assert cfg.quantization in ("gptq", "gptq_marlin")
    assert cfg.hf_config.num_hidden_layers == 3
    qc = json.loads((Path(rtn_checkpoint) / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4
