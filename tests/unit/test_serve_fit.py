"""The vLLM fit check: every number below is worked out by hand in the comments."""

import pytest

from llmquant.errors import UserError
from llmquant.serve.fit import (
    GiB, NON_TORCH_BYTES, FitRequest, GpuMemory, ModelShape, WeightBytes, activation_bytes, kv_bytes_per_token,
    kv_cache_bytes, layers_per_stage, overhead_bytes, plan_fit, stage_weight_bytes,
)

MiB = 1 << 20

# SmolLM2-135M: 30 layers, 9 heads / 3 KV heads of 64, hidden 576, tied embeddings
SMOL = ModelShape(layers=30, heads=9, kv_heads=3, head_dim=64, hidden=576, intermediate=1536, vocab=49152,
                  max_positions=8192, tied=True)
# a made-up model with round numbers: 4 layers, 2 KV heads of 128
TOY = ModelShape(layers=4, heads=8, kv_heads=2, head_dim=128, hidden=1024, intermediate=4096, vocab=32000,
                 max_positions=131072, tied=False)
TOY_W = WeightBytes(embed=64 * MiB, head=64 * MiB, final=0, per_layer=(256 * MiB,) * 4)  # 1152 MiB in all
GPU4 = GpuMemory(total=4 * GiB, free=4 * GiB)


def req(**kw):
    base = dict(util=0.5, overhead_bytes=512 * MiB)  # budget 2048 MiB per 4 GiB GPU; fixed 512 MiB overhead
    return FitRequest(**(base | kw))


def test_kv_bytes_per_token_follows_vllm_head_split():
    # 2 (K,V) x 30 layers x 3 heads x 64 x 2 bytes
    assert kv_bytes_per_token(SMOL, 30, tp=1, kv_bytes=2) == 23040
    # tp=2: 3 // 2 = 1 head per GPU
    assert kv_bytes_per_token(SMOL, 30, tp=2, kv_bytes=2) == 7680
    # tp=4: 3 // 4 = 0 -> replicated, still 1 head per GPU
    assert kv_bytes_per_token(SMOL, 30, tp=4, kv_bytes=2) == 7680
    # fp8 cache: half
    assert kv_bytes_per_token(SMOL, 30, tp=1, kv_bytes=1) == 11520


def test_kv_cache_rounds_up_to_16_token_blocks():
    assert kv_cache_bytes(100, 16) == 1600
    assert kv_cache_bytes(100, 17) == 3200  # two blocks


def test_layers_per_stage_like_get_pp_indices():
    assert layers_per_stage(30, 1) == [30]
    assert layers_per_stage(30, 3) == [10, 10, 10]
    # 30 // 4 = 7, remainder 2 goes to the 2nd- and 3rd-last stages
    assert layers_per_stage(30, 4) == [7, 8, 8, 7]
    assert layers_per_stage(4, 3) == [1, 2, 1]
    with pytest.raises(UserError, match="pipeline_parallel_size: 5"):
        layers_per_stage(4, 5)


def test_stage_weights_split_embedding_head_and_tp():
    assert stage_weight_bytes(TOY_W, [4], tp=1, tied=False) == [1152 * MiB]
    assert stage_weight_bytes(TOY_W, [4], tp=2, tied=False) == [576 * MiB]
    # pp=3: [1, 2, 1] layers; embedding on the first stage, head on the last
    assert stage_weight_bytes(TOY_W, [1, 2, 1], tp=1, tied=False) == [320 * MiB, 512 * MiB, 320 * MiB]
    tied = WeightBytes(embed=64 * MiB, head=0, final=MiB, per_layer=(256 * MiB,) * 4)
    # tied, one stage: the head is the embedding (counted once)
    assert stage_weight_bytes(tied, [4], tp=1, tied=True) == [64 * MiB + MiB + 1024 * MiB]
    # tied, two stages: the last stage needs its own copy of the embedding as the head
    assert stage_weight_bytes(tied, [2, 2], tp=1, tied=True) == [576 * MiB, 512 * MiB + MiB + 64 * MiB]


def test_overhead_estimate():
    r = FitRequest(max_num_batched_tokens=2048, max_num_seqs=16, act_bytes=2)
    # 2048 x (4 x 1024 + 2 x 4096) x 2 = 50,331,648 ; 16 x 32000 x 4 x 2 = 4,096,000
    assert activation_bytes(TOY, r) == 50_331_648 + 4_096_000
    assert overhead_bytes(TOY, r) == NON_TORCH_BYTES + 54_427_648
    assert overhead_bytes(TOY, FitRequest(overhead_bytes=123)) == 123


def test_chooses_the_longest_context_that_fits_capped_by_the_model():
    # left for KV: 2048 - 1152 - 512 = 384 MiB; 2x4x2x128x2 = 4096 B/token -> 98,304 tokens
    plan = plan_fit(TOY, TOY_W, [GPU4], req())
    assert plan.stages[0].kv_available == 384 * MiB
    assert plan.stages[0].max_tokens == 98304
    assert plan.max_model_len == 98304 and plan.chosen
    capped = ModelShape(**{**TOY.__dict__, "max_positions": 4096})
    assert plan_fit(capped, TOY_W, [GPU4], req()).max_model_len == 4096


def test_refuses_a_context_that_does_not_fit_and_says_by_how_much():
    # 131072 tokens x 4096 B = 512 MiB needed, 384 MiB left: short by 128 MiB = 0.125 GiB
    with pytest.raises(UserError) as e:
        plan_fit(TOY, TOY_W, [GPU4], req(max_model_len=131072))
    msg = str(e.value)
    assert "max_model_len: 131072 tokens need 0.50 GiB" in msg
    assert "short by 0.12 GiB" in msg and "at most 98304 tokens fit" in msg
    ok = plan_fit(TOY, TOY_W, [GPU4], req(max_model_len=98304))
    assert ok.max_model_len == 98304 and not ok.chosen


def test_two_requests_of_full_length_halve_the_context():
    assert plan_fit(TOY, TOY_W, [GPU4], req(full_length_seqs=2)).max_model_len == 49152


def test_tensor_parallel_splits_weights_and_kv():
    # per GPU: weights 576 MiB, left 2048 - 576 - 512 = 960 MiB, KV 2x4x1x128x2 = 2048 B/token
    plan = plan_fit(TOY, TOY_W, [GPU4, GPU4], req(tp=2))
    assert plan.stages[0].weights == 576 * MiB
    assert plan.stages[0].kv_per_token == 2048
    assert plan.worst.max_tokens == 960 * MiB // 2048 == 491520
    assert plan.max_model_len == 131072  # the model's own limit


def test_pipeline_parallel_worst_stage_decides():
    # stages [1, 2, 1] layers; middle stage: 512 MiB weights, left 1024 MiB, 2x2x2x128x2 = 2048 B/token
    plan = plan_fit(TOY, TOY_W, [GPU4] * 3, req(pp=3))
    assert [s.layers for s in plan.stages] == [1, 2, 1]
    assert plan.worst.stage == 1
    assert plan.worst.max_tokens == 1024 * MiB // 2048 == 524288
    assert plan.stages[0].max_tokens == 1216 * MiB // 1024  # 2048 - 320 - 512 left, one layer


def test_refuses_when_weights_alone_exceed_the_budget():
    big = WeightBytes(embed=0, head=0, final=0, per_layer=(GiB,) * 4)
    # 4096 MiB weights + 512 MiB overhead - 2048 MiB budget = 2560 MiB = 2.50 GiB over
    with pytest.raises(UserError, match=r"exceed the budget of 2\.00 GiB .* by 2\.50 GiB"):
        plan_fit(TOY, big, [GPU4], req())


def test_refuses_when_the_gpu_has_less_free_memory_than_asked_for():
    busy = GpuMemory(total=4 * GiB, free=GiB)
    # util 0.5 asks for 2 GiB; 1 GiB free -> short by 1 GiB; 1/4 = 0.25 would do
    with pytest.raises(UserError, match=r"short by 1\.00 GiB\); set it to 0\.25 or less"):
        plan_fit(TOY, TOY_W, [busy], req())


def test_refuses_when_too_few_gpus_are_given():
    with pytest.raises(UserError, match="= 2 GPUs, but only 1 are visible"):
        plan_fit(TOY, TOY_W, [GPU4], req(tp=2))


def test_tensor_parallel_must_divide_the_heads():
    with pytest.raises(UserError, match="tensor_parallel_size: 2 does not divide the model's 9 attention heads"):
        plan_fit(SMOL, TOY_W, [GPU4, GPU4], req(tp=2))


def test_refuses_to_choose_a_tiny_context():
    # overhead 895 MiB: 2048 - 1152 - 895 = 1 MiB left = 256 tokens of 4 KiB, exactly the floor
    assert plan_fit(TOY, TOY_W, [GPU4], req(overhead_bytes=895 * MiB)).max_model_len == 256
    with pytest.raises(UserError, match="only 240 tokens of context fit"):
        # 1 MiB - 64 KiB left = 960 KiB / 4 KiB = 240 tokens, below the 256 floor
        plan_fit(TOY, TOY_W, [GPU4], req(overhead_bytes=895 * MiB + 64 * 1024))
