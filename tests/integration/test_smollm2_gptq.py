"""GPTQ on SmolLM2-135M, quick protocol of ../shared/docs/PROTOCOLS.md: wikitext-2 test, first
64 windows of 512 tokens, fp32; calibration 128 x 512-token crops of wiki.valid.tokens, seed 0;
group size 64. GPTQ must beat RTN at 4 bits and beat it by far at 3 bits."""

import pytest

from tests.conftest import requires_shared
from tests.integration.quick import run_quick_protocol

pytestmark = [pytest.mark.slow, pytest.mark.needs_shared,
              requires_shared("data", "wikitext2", "wiki.test.raw.txt"),
              requires_shared("data", "wikitext2", "wiki.valid.tokens")]


@pytest.fixture(scope="module")
def gptq_run(tmp_path_factory):
    return run_quick_protocol(tmp_path_factory.mktemp("smollm2-gptq"), "smollm2-gptq-test", [
        "{name: rtn-w4-g64, method: rtn, bits: 4, group_size: 64}",
        "{name: gptq-w4-g64, method: gptq, bits: 4, group_size: 64}",
        "{name: rtn-w3-g64, method: rtn, bits: 3, group_size: 64}",
        "{name: gptq-w3-g64, method: gptq, bits: 3, group_size: 64}"], calibrate=True)


def test_gptq_beats_rtn(gptq_run):
    ppl = {o.name: o.result.ppl for o in gptq_run.variants}
    assert ppl["gptq-w4-g64"] < ppl["rtn-w4-g64"]
    assert ppl["gptq-w3-g64"] < 0.8 * ppl["rtn-w3-g64"]
    # gptqmodel 7.6 on the same protocol (PROTOCOLS.md): W4 g64 37.11, W3 g64 68.33. Ours with
    # the defaults (MSE grids, float64 solve on a CPU; bench/results/gptq-w3-2026-12-07.md):
    # W4 36.13, W3 52.78 on an AVX-512 CPU, the same on any thread count. Another CPU's kernels
    # make another, equally good solution: W3 moved 2.4 % under AVX2 dispatch and spans ~8 %
    # over such draws, hence the margins. W3 must beat gptqmodel's number (issue 19's goal).
    assert ppl["gptq-w4-g64"] < 37.11 * 1.03
    assert ppl["gptq-w3-g64"] < 68.33


def test_layer_report_and_checkpoint(gptq_run):
    o = next(v for v in gptq_run.variants if v.name == "gptq-w4-g64")
    rows = o.summary["layers"]
    assert len(rows) == 30 * 7
    assert all(0 < r["output_error"] < 0.5 and r["seconds"] > 0 for r in rows)
    cfg = o.summary["config"]
    assert cfg["desc_act"] is False and cfg["true_sequential"] is True and cfg["act_group_aware"] is True
