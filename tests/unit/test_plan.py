"""`llmquant plan`: figures for tiny, Llama-2-7B- and 70B-shaped models (config.json only)
against arithmetic done by hand here, packed sizes against a checkpoint actually written, and
a run that cannot fit stopping before anything is loaded."""

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from llmquant.cli import app
from llmquant.plan import Machine, plan_for
from llmquant.plan import memory as mem
from llmquant.plan.packing import checkpoint_bytes
from llmquant.serve.fit import GpuMemory

GiB = 1 << 30
runner = CliRunner()

LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float16"}
LLAMA2_70B = LLAMA2_7B | {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                          "num_attention_heads": 64, "num_key_value_heads": 8}
BOX_24 = Machine(ram_total=24 * GiB, ram_available=22 * GiB, disk_free=500 * GiB)


def config_dir(tmp_path, cfg, name="m"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def recipe(tmp_path, model_dir, variants, dtype="auto", device="cpu", calib="n_samples: 16, seqlen: 512",
           eval_extra="", seqlen=2048):
    from llmquant.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(f"model: {{source: {model_dir}, dtype: {dtype}, device: {device}}}\n"
                 f"calibration: {{dataset: 'builtin:pydoc', {calib}}}\n"
                 f"eval: {{dataset: 'builtin:pydoc', seqlen: {seqlen}, isolate: false{eval_extra}}}\n"
                 f"variants: {variants}\n"
                 f"output: {{dir: {tmp_path / 'run'}, board: {tmp_path / 'board.sqlite'}}}\n")
    return load_recipe(p)


def step(plan, name):
    return next(s for s in plan.steps if s.name == name)


def test_llama2_7b_footprint_and_gptq_checkpoint_by_hand(tmp_path):
    # float32 Hessians: the precision the 5.82 GiB below was measured at
    r = recipe(tmp_path, config_dir(tmp_path, LLAMA2_7B),
               "[{name: g, method: gptq, bits: 4, group_size: 128, precision: float32}]")
    plan = plan_for(r, BOX_24)
    fp = plan.footprint
    assert fp.total_params == 6_738_415_616  # Llama-2-7B's published parameter count
    assert fp.block_params == 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert (fp.embed_params, fp.head_params, fp.stored_bytes) == (32000 * 4096, 32000 * 4096, 2)
    assert sorted(fp.distinct_inputs()) == [4096, 4096, 4096, 11008]
    # GPTQ v1, W4 g128: qweight in*out/2, qzeros and fp16 scales per group of 128 rows, g_idx in*4
    square = 4096 * 4096 // 2 + 32 * 4096 // 2 + 32 * 4096 * 2 + 4096 * 4
    up = 4096 * 11008 // 2 + 32 * 11008 // 2 + 32 * 11008 * 2 + 4096 * 4
    down = 11008 * 4096 // 2 + 86 * 4096 // 2 + 86 * 4096 * 2 + 11008 * 4
    rest = 2 * 32000 * 4096 + 4096 + 32 * 2 * 4096  # embeddings, head, norms in fp16
    assert step(plan, "quantize g").disk == 32 * (4 * square + 2 * up + down) + rest * 2
    # GPTQ's working set at 16 x 512 tokens, float32 activations under the 4 GiB budget
    tokens = 16 * 512
    terms = step(plan, "quantize g").terms
    assert terms["Hessians"] == (3 * 4096 ** 2 + 11008 ** 2) * 4
    assert terms["solve (Cholesky, inverse)"] == 2 * 11008 ** 2 * 4
    assert terms["parked batches"] == tokens * (4 * 4096 + 2 * 11008 + 4096 + 4 * 4096) * 4
    assert terms["calibration activations"] == 2 * tokens * 4096 * 4
    assert terms["block file pages"] == fp.block_params * 2 and terms["block float32"] == fp.block_params * 4
    assert step(plan, "quantize g").host == int(sum(terms.values()) * mem.ALLOCATOR_SLACK)
    # the figure measured for this shape (bench/results/scale-2026-12-03.md: 5.82 GiB) within 10 %
    assert abs(step(plan, "quantize g").host / (5.82 * GiB) - 1) < 0.10
    assert step(plan, "quantize g").problem is None and step(plan, "evaluate g").problem is None


def test_float64_gptq_doubles_the_hessian_terms_on_7b_shapes(tmp_path):
    """precision auto is float64 on a CPU (the same checkpoint on any thread count)."""
    d = config_dir(tmp_path, LLAMA2_7B)
    for precision in ("float64", "auto"):
        r = recipe(tmp_path, d, f"[{{name: g, method: gptq, bits: 3, group_size: 64, precision: {precision}}}]")
        terms = step(plan_for(r, BOX_24), "quantize g").terms
        assert terms["Hessians"] == (3 * 4096 ** 2 + 11008 ** 2) * 8
        assert terms["solve (Cholesky, inverse)"] == 2 * 11008 ** 2 * 8
        assert step(plan_for(r, BOX_24), "quantize g").problem is None  # 3.3 GiB of Hessians and solve fit
    from llmquant.plan.build import calibration_of, options_of

    variant = r.variants[0]
    assert options_of(variant, calibration_of(r), "cuda:0").solve_bytes == 4  # auto on a GPU: float32
    assert options_of(variant, calibration_of(r), "cpu").solve_bytes == 8


def test_activation_budget_bounds_the_gptq_estimate(tmp_path):
    big = recipe(tmp_path, config_dir(tmp_path, LLAMA2_7B), "[{name: g, method: gptq, bits: 4, group_size: 128}]",
                 calib="n_samples: 128, seqlen: 2048, activation_budget_mb: 1024")
    terms = step(plan_for(big, BOX_24), "quantize g").terms
    assert terms["parked batches"] == terms["calibration activations"] == 1 << 30
    # 128 x 2048 x 4096 x 4 bytes x 2 (in and out) = 8 GiB, of which 1 GiB stays in memory
    assert step(plan_for(big, BOX_24), "quantize g").disk > 7 * GiB


def test_baseline_eval_on_a_24_gb_cpu_box(tmp_path):
    """bf16 on a CPU re-scores the first windows in float32: a checkpoint stored in 16 bits is
    loaded in 16 bits (the check upcasts module by module); one stored in float32 needs its float32
    copy, which does not fit 24 GiB: the problem says what would."""
    r = recipe(tmp_path, config_dir(tmp_path, LLAMA2_7B), "[]", dtype="bfloat16")
    base = step(plan_for(r, BOX_24), "evaluate baseline")
    assert base.terms["weights"] == 6_738_415_616 * 2 and base.problem is None
    # one 2048-token window: bf16 logits + float32 logits + float32 log-probs; attention scores
    assert base.terms["logits and log-probabilities"] == 2048 * 32000 * (2 + 8)
    assert base.terms["attention scores"] == 32 * 2048 * 2048 * 4
    assert base.terms["hidden and MLP activations"] == 2048 * (4 * 4096 + 3 * 11008) * 4

    fp32 = recipe(tmp_path, config_dir(tmp_path, LLAMA2_7B | {"torch_dtype": "float32"}, "m32"), "[]",
                  dtype="bfloat16")
    heavy = step(plan_for(fp32, BOX_24), "evaluate baseline")
    assert heavy.terms["weights"] == 6_738_415_616 * 4
    assert "needs ~" in heavy.problem and "eval.check_windows: 0 it would need" in heavy.problem
    light = recipe(tmp_path, tmp_path / "m32", "[]", dtype="bfloat16", eval_extra=", check_windows: 0")
    assert step(plan_for(light, BOX_24), "evaluate baseline").problem is None


def test_llama2_70b_on_gpus(tmp_path):
    r = recipe(tmp_path, config_dir(tmp_path, LLAMA2_70B),
               "[{name: a, method: awq, bits: 4, group_size: 128}]", dtype="float16", device="cuda")
    one_24 = Machine(ram_total=64 * GiB, ram_available=60 * GiB, disk_free=500 * GiB,
                     gpus=(GpuMemory(24 * GiB, 24 * GiB),))
    plan = plan_for(r, one_24)
    fp = plan.footprint
    assert fp.total_params == 68_976_648_192  # Llama-2-70B
    q = step(plan, "quantize a")
    assert q.device is not None and q.device < 24 * GiB  # one 70B block fits a 24 GB GPU
    ev = step(plan, "evaluate baseline")  # 138 GB of fp16 weights do not
    assert ev.device > 128 * GiB and "GPU" in ev.problem and "would fit" in ev.problem
    assert "host memory" in step(plan, "evaluate baseline").problem  # nor in 64 GiB of RAM
    packed = step(plan, "evaluate a")
    assert packed.device < ev.device / 3
    no_gpu = plan_for(r, BOX_24)
    assert "none is visible" in step(no_gpu, "quantize a").problem


def test_packed_size_matches_a_written_checkpoint(tmp_path, tiny_model_dir):
    """The arithmetic against the tensors RTN actually writes (tiny Llama, W4 g32 and W8 g64)."""
    from llmquant.loading.sources import load_config, resolve_source
    from llmquant.pipeline import run
    from llmquant.preflight import meta_model
    from llmquant.serve.artifact import _DTYPE_BYTES, numel, tensor_table

    r = recipe(tmp_path, tiny_model_dir, "[{name: w4, method: rtn, bits: 4, group_size: 32}, "
                                         "{name: w8, method: rtn, bits: 8, group_size: 64, sym: false}]",
               dtype="float32", eval_extra=", max_windows: 1, latency: {enabled: false}", seqlen=64)
    summary = run(r)
    model = meta_model(load_config(resolve_source(str(tiny_model_dir), tmp_path)))
    for v, o in zip(r.variants, summary.variants):
        written = sum(numel(shape) * _DTYPE_BYTES[dt] for dt, shape in tensor_table(o.checkpoint).values())
        assert checkpoint_bytes(model, v)[0] == written, v.name


def test_run_that_cannot_fit_exits_2_before_loading(tmp_path):
    """A 3.4-trillion-parameter config (no weights at all): the plan stops the run in one line,
    before anything is read, and nothing reaches the board."""
    huge = config_dir(tmp_path, LLAMA2_7B | {"hidden_size": 32768, "intermediate_size": 98304,
                                            "num_hidden_layers": 260, "num_attention_heads": 256,
                                            "num_key_value_heads": 256})
    r = tmp_path / "huge.yaml"
    r.write_text(f"model: {{source: {huge}, dtype: bfloat16, device: cpu}}\n"
                 "eval: {dataset: 'builtin:pydoc', seqlen: 64, check_windows: 0}\n"
                 "variants: [{name: a, method: rtn, bits: 4, group_size: 128}]\n"
                 f"output: {{dir: {tmp_path / 'run'}, board: {tmp_path / 'board.sqlite'}}}\n")
    res = runner.invoke(app, ["run", str(r)])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "will not fit this machine: evaluate baseline: needs ~" in errors[0] and str(r) in errors[0]
    assert not (tmp_path / "board.sqlite").exists() or sqlite3.connect(tmp_path / "board.sqlite").execute(
        "SELECT COUNT(*) FROM results").fetchone()[0] == 0
    assert not (tmp_path / "run" / "variants").exists()
    planned = runner.invoke(app, ["plan", str(r), "--format", "json"])
    assert planned.exit_code == 2
    doc = json.loads(planned.stdout[:planned.stdout.rindex("}") + 1])
    assert doc["footprint"]["params"] > 3e12 and doc["problems"] and doc["estimates"] is True
    assert {s["step"] for s in doc["steps"]} >= {"evaluate baseline", "quantize a", "evaluate a"}


def test_plan_of_the_tiny_model_fits(tmp_path, tiny_model_dir):
    r = recipe(tmp_path, tiny_model_dir, "[{name: w4, method: rtn, bits: 4, group_size: 32}]", dtype="float32")
    res = runner.invoke(app, ["plan", str(r.path)])
    assert res.exit_code == 0, res.output
    assert "evaluate baseline" in res.output and "does not fit" not in res.output
    bad = runner.invoke(app, ["plan", str(r.path), "--format", "xml"])
    assert bad.exit_code == 2 and "--format: 'xml' is not allowed" in bad.output


def test_every_method_has_a_working_set_or_is_planned_whole():
    from llmquant.quantize import METHODS

    for name, entry in METHODS.items():
        assert (name in mem.WORKING_SETS) != entry.loads_own_model, name


@pytest.mark.parametrize("offline", [True])
def test_hub_id_offline_fails_in_one_line(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = tmp_path / "hub.yaml"
    r.write_text("model: {source: someorg/not-cached-model}\n"
                 "eval: {dataset: 'builtin:pydoc'}\n"
                 f"output: {{dir: {tmp_path / 'run'}}}\n")
    res = runner.invoke(app, ["plan", str(r)])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert "someorg/not-cached-model" in errors[0] and "local directory" in errors[0]


def test_plan_for_another_model_and_machine_from_the_command_line(tmp_path):
    """--source plans a config-only directory; --ram-gib/--gpu-gib/--device describe the machine."""
    cfg = config_dir(tmp_path, LLAMA2_7B, "llama")
    r = tmp_path / "r.yaml"
    r.write_text("model: {source: someorg/not-here, dtype: float16, device: cuda}\n"
                 "calibration: {dataset: 'builtin:pydoc', n_samples: 16, seqlen: 512}\n"
                 "eval: {dataset: 'builtin:pydoc', seqlen: 2048}\n"
                 "variants: [{name: g, method: gptq, bits: 4, group_size: 128}]\n"
                 f"output: {{dir: {tmp_path / 'run'}}}\n")
    big = runner.invoke(app, ["plan", str(r), "--source", str(cfg), "--ram-gib", "32", "--gpu-gib", "24",
                              "--format", "json"])
    assert big.exit_code == 0, big.output
    doc = json.loads(big.stdout[:big.stdout.rindex("}") + 1])
    assert doc["machine"]["ram_total_bytes"] == 32 * GiB and doc["machine"]["gpus"][0]["total_bytes"] == 24 * GiB
    assert doc["device"] == "cuda" and doc["footprint"]["params"] == 6_738_415_616
    small = runner.invoke(app, ["plan", str(r), "--source", str(cfg), "--gpu-gib", "4"])
    assert small.exit_code == 2 and "a GPU with" in small.output
    cpu = runner.invoke(app, ["plan", str(r), "--source", str(cfg), "--device", "cpu", "--ram-gib", "4"])
    assert cpu.exit_code == 2 and "this machine has 4.0 GiB" in cpu.output
    bad = runner.invoke(app, ["plan", str(r), "--source", str(cfg), "--device", "tpu"])
    assert bad.exit_code == 2 and "--device: 'tpu' is not allowed" in bad.output


def test_vllm_serve_step_uses_the_fit_check(tmp_path):
    """Serving with vLLM is planned by serve/fit.py, the arithmetic `llmquant serve` checks with:
    KV cache of Llama-2-7B = 2 (K, V) x 32 layers x 32 heads x 128 x 2 bytes per token."""
    from llmquant.recipe import load_recipe

    cfg = config_dir(tmp_path, LLAMA2_7B)
    p = tmp_path / "r.yaml"
    p.write_text(f"model: {{source: {cfg}, dtype: float16, device: cuda}}\n"
                 "eval: {dataset: 'builtin:pydoc', seqlen: 2048}\n"
                 "variants: [{name: w4, method: rtn, bits: 4, group_size: 128}]\n"
                 "serve: {after_run: check, engine: vllm, vllm: {max_model_len: 4096, enforce_eager: true}}\n"
                 f"output: {{dir: {tmp_path / 'run'}}}\n")
    r = load_recipe(p)
    gpu24 = Machine(64 * GiB, 64 * GiB, 500 * GiB, gpus=(GpuMemory(24 * GiB, 24 * GiB),))
    s = step(plan_for(r, gpu24), "serve w4 (vLLM)")
    kv = 2 * 32 * 32 * 128 * 2 * 4096
    weights = step(plan_for(r, gpu24), "quantize w4").disk  # the checkpoint, all on one GPU
    assert s.problem is None and "max_model_len 4096" in s.note
    assert weights + kv < s.device < weights + kv + 4 * GiB  # + vLLM's overhead estimate
    small = step(plan_for(r, Machine(64 * GiB, 64 * GiB, 500 * GiB, gpus=(GpuMemory(4 * GiB, 4 * GiB),))),
                 "serve w4 (vLLM)")
    assert "exceed the budget of 3.60 GiB" in small.problem


def test_quantize_time_scales_a_measured_block():
    from llmquant.plan.timing import LLAMA7B_BLOCK, Measured, duration, quantize_seconds

    table = (Measured("gptq", "AMD EPYC", "AVX512", LLAMA7B_BLOCK, 8192, 180.0, "f.md"),
             Measured("gptq", "AMD EPYC", "AVX512", LLAMA7B_BLOCK // 50, 65536, 9.0, "g.md"),
             Measured("rtn", "AMD EPYC", "AVX512", LLAMA7B_BLOCK, 0, 20.0, "f.md"))
    same = quantize_seconds("gptq", LLAMA7B_BLOCK, 32, 8192, "AMD EPYC 9xx", "AVX512", table)
    assert same.seconds == 32 * 180.0 and same.source == "f.md" and not same.upper
    more = quantize_seconds("gptq", LLAMA7B_BLOCK * 2, 80, 4 * 8192, "AMD EPYC 9xx", "AVX512", table)
    assert more.seconds == 180.0 * 2 * 4 * 80 and more.upper  # linear in params and tokens: at most
    small = quantize_seconds("gptq", LLAMA7B_BLOCK // 40, 30, 65536, "AMD EPYC", "AVX512", table)
    assert small.source == "g.md" and small.seconds == pytest.approx(9.0 * (50 / 40) * 30, rel=1e-3)
    assert quantize_seconds("rtn", LLAMA7B_BLOCK, 32, 8192, "AMD EPYC", "AVX512", table).seconds == 640.0
    assert quantize_seconds("gptq", LLAMA7B_BLOCK, 32, 8192, "Intel Xeon", "AVX512", table) is None
    assert quantize_seconds("gptq", LLAMA7B_BLOCK, 32, 8192, "AMD EPYC", "AVX2", table) is None
    assert (duration(640.0), duration(2 * 3600, upper=True), duration(30)) == ("~11 min", "<=2.0 h", "~30 s")
    # the rows ran float32 min/max GPTQ: float64 and MSE grids price in the solve's measured ratios
    slow = quantize_seconds("gptq", LLAMA7B_BLOCK, 32, 8192, "AMD EPYC", "AVX512", table,
                            options={"precision": "float64", "grid": "mse"})
    assert slow.seconds == pytest.approx(32 * 180.0 * 77.8 / 33.9) and slow.upper
    assert slow.factor == pytest.approx(77.8 / 33.9) and not slow.by_tokens  # the plan's note names why
    plain = quantize_seconds("gptq", LLAMA7B_BLOCK, 32, 8192, "AMD EPYC", "AVX512", table,
                             options={"precision": "float32", "grid": "minmax"})
    assert plain.seconds == 32 * 180.0 and not plain.upper


def test_solver_options_resolve_auto_by_device():
    from llmquant.plan.build import solver_options
    from llmquant.quantize.gptq.config import GPTQVariant

    v = GPTQVariant(name="g", method="gptq", bits=4)
    assert solver_options(v, "cpu") == {"grid": "mse", "precision": "float64"}
    assert solver_options(v, "cuda:0") == {"grid": "mse", "precision": "float32"}


def test_tiny_config_by_hand(tmp_path):
    """A tiny tied Llama with grouped KV heads: every figure of the RTN W4 g32 plan by hand."""
    tiny = LLAMA2_7B | {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                        "tie_word_embeddings": True, "torch_dtype": "float32"}
    r = recipe(tmp_path, config_dir(tmp_path, tiny), "[{name: w4, method: rtn, bits: 4, group_size: 32}]",
               dtype="float32", seqlen=128)
    plan = plan_for(r, BOX_24)
    fp = plan.footprint
    block = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64  # q, o; k, v (2 KV heads of 16); MLP; norms
    assert (fp.block_params, fp.embed_params, fp.head_params, fp.other_params) == (block, 512 * 64, 0, 64)
    assert fp.total_params == 3 * block + 512 * 64 + 64
    q = step(plan, "quantize w4")
    assert q.terms == {"process": mem.PROCESS_BYTES, "block file pages": block * 4, "block float32": block * 4,
                       "weight and its dequantized copy": 2 * 64 * 128 * 4}
    per_layer = sum(i * o // 2 + (i // 32) * o // 2 + (i // 32) * o * 2 + i * 4 for i, o in
                    [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)])
    assert q.disk == 3 * per_layer + (512 * 64 + 64 + 3 * 2 * 64) * 2
    ev = step(plan, "evaluate baseline")
    assert ev.terms["weights"] == fp.total_params * 4 and ev.terms["attention scores"] == 4 * 128 * 128 * 4
    assert ev.host == int(sum(ev.terms.values()) * mem.ALLOCATOR_SLACK)


def test_mixed_plans_the_gradient_pass_on_7b_shapes(tmp_path):
    r = recipe(tmp_path, config_dir(tmp_path, LLAMA2_7B), "[{name: m, method: mixed, budget: {bits: 4}}, "
               "{name: o, method: mixed, budget: {bits: 4}, weighting: output}]")
    plan = plan_for(r, BOX_24)
    terms = step(plan, "quantize m").terms
    # 16 sequences x 512 tokens x 4096 x 4 bytes, kept for each of the 32 blocks (4 GiB: within the budget)
    assert terms["gradient pass: kept block inputs"] == 16 * 512 * 4096 * 4 * 32
    assert terms["gradient pass: gradients, logits"] == 16 * 512 * 4096 * 4 + 3 * 512 * 32000 * 4
    assert terms["Hessians"] == (3 * 4096 ** 2 + 11008 ** 2) * 8  # the sensitivity pass: GPTQ's Hessians (float64)
    assert "gradient pass: kept block inputs" not in step(plan, "quantize o").terms
    assert step(plan, "quantize m").problem is None  # fits the 24 GB box


def test_signround_plans_its_tuning_on_7b_shapes(tmp_path):
    r = recipe(tmp_path, config_dir(tmp_path, LLAMA2_7B), "[{name: s, method: signround, bits: 3, group_size: 64}]",
               calib="n_samples: 128, seqlen: 512")
    terms = step(plan_for(r, BOX_24), "quantize s").terms
    block = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert terms["float targets"] == 128 * 512 * 4096 * 4
    assert terms["rounding offsets, gradients, best copy"] == 3 * block * 4
    assert terms["fake-quantized weights and gradients"] == 2 * block * 4
    # 8 samples x 512 tokens: q, k, v, o, gate, up, down outputs and six hidden-wide tensors; 32 heads' probabilities
    saved = 4 * 4096 + 2 * 11008 + 4096 + 6 * 4096
    assert terms["one step's backward"] == 8 * 512 * saved * 4 + 8 * 32 * 512 * 512 * 4
    assert step(plan_for(r, BOX_24), "quantize s").problem is None  # fits the 24 GB box
