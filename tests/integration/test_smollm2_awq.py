"""AWQ on SmolLM2-135M, quick protocol of ../shared/docs/PROTOCOLS.md: wikitext-2 test, first
64 windows of 512 tokens, fp32; calibration 128 x 512-token crops of wiki.valid.tokens, seed 0;
group size 64. AWQ must beat RTN at 4 bits (RTN W4 g64 42.76, GPTQ W4 g64 37.12 on this protocol,
bench/results/gptq-2026-11-27-summary.md), and the checkpoint must read as AWQ GEMM.
Slow: AWQ takes ~5 min on 2 cores (bf16 search, 2026-12-03; ~22 min with the exhaustive search
of before), the whole module ~10 min."""

import json

import pytest
from safetensors import safe_open

from tests.conftest import requires_shared
from tests.integration.quick import run_quick_protocol

AWQ_BOUND = 36.6  # 33.92 measured + ~8 %: see test_awq_beats_rtn

pytestmark = [pytest.mark.slow, pytest.mark.needs_shared,
              requires_shared("data", "wikitext2", "wiki.test.raw.txt"),
              requires_shared("data", "wikitext2", "wiki.valid.tokens")]


@pytest.fixture(scope="module")
def awq_run(tmp_path_factory):
    return run_quick_protocol(tmp_path_factory.mktemp("smollm2-awq"), "smollm2-awq-test", [
        "{name: rtn-w4-g64, method: rtn, bits: 4, group_size: 64}",
        "{name: rtn-w4-g64-asym, method: rtn, bits: 4, group_size: 64, sym: false}",
        "{name: awq-w4-g64, method: awq, bits: 4, group_size: 64}"], calibrate=True)


def test_awq_beats_rtn(awq_run):
    ppl = {o.name: o.result.ppl for o in awq_run.variants}
    assert ppl["awq-w4-g64"] < ppl["rtn-w4-g64"]
    assert ppl["awq-w4-g64"] < ppl["rtn-w4-g64-asym"]  # the same zero-point grid without AWQ: 39.38
    # Measured 2026-11-27, 2 threads, calib_dtype auto (bfloat16 on this AMX CPU): AWQ W4 g64
    # 33.92 (RTN W4 g64 42.76, asymmetric RTN 39.38, GPTQ W4 g64 37.12). 2026-12-03 on an AMD EPYC
    # (AVX512-BF16): 34.72 with that exhaustive search, 34.19 with today's defaults (search_samples
    # 16, coarse_grid 5; bench/results/awq-speed-2026-12-03.md). The scale search picks among discrete ratios,
    # so float rounding that differs with the thread count or the calibration dtype can flip
    # choices; the bound leaves ~8 % for that (GPTQ's W3 moved that much between 1 and 2 threads).
    assert ppl["awq-w4-g64"] < AWQ_BOUND


def test_checkpoint_and_report(awq_run):
    o = next(v for v in awq_run.variants if v.name == "awq-w4-g64")
    qc = json.loads((o.checkpoint / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm" and qc["group_size"] == 64 and qc["zero_point"]
    with safe_open(str(o.checkpoint / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("model.layers.0.mlp.down_proj.qweight").get_shape() == [1536, 576 // 8]
        assert f.get_slice("model.layers.0.mlp.down_proj.scales").get_shape() == [1536 // 64, 576]
    rows = o.summary["layers"]
    assert len(rows) == 30 * 7 and all(0 < r["output_error"] < 0.5 for r in rows)
    # SmolLM2 has 3 KV heads for 9 heads: v -> o cannot take a scale; the other three mappings do
    assert {r.get("awq_prev") for r in rows} == {"input_layernorm", "post_attention_layernorm", "mlp.up_proj", None}
