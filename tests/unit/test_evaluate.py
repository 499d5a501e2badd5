"""The one evaluation path: 16-bit compute checked against float32, casting, protocol."""

import pytest
import torch
from safetensors.torch import save_file

from llmquant.eval.evaluate import EvalJob, cast_model, evaluate_checkpoint, protocol_for
from llmquant.loading.runtime import cpu_has_bf16, resolve_dtype


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory, tiny_model_dir):
    from transformers import AutoTokenizer

    from tests.conftest import pydoc_text

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(pydoc_text("test")[:30000], return_tensors="pt").input_ids
    path = tmp_path_factory.mktemp("tok") / "t.safetensors"
    save_file({"input_ids": ids}, str(path))
    return path


def job(model_dir, tokens, dtype, **kw):
    return EvalJob(checkpoint=str(model_dir), tokens_path=str(tokens), corpus="c", corpus_sha256="s",
                   seqlen=128, max_windows=6, dtype=dtype, device="cpu", **kw)


def test_resolve_dtype():
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_bf16() else "float32")


def test_bf16_checked_against_float32(tiny_model_dir, tokens_file):
    fp32 = evaluate_checkpoint(job(tiny_model_dir, tokens_file, "float32"))
    bf16 = evaluate_checkpoint(job(tiny_model_dir, tokens_file, "bfloat16", check_windows=2, check_tolerance_pct=5.0))
    c = bf16.check
    assert fp32.check is None and c["windows"] == 2
    # the float32 reference of the check equals an independent float32 run on those windows
    from llmquant.eval.perplexity import perplexity
    from transformers import AutoModelForCausalLM
    from safetensors.torch import load_file

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    want = perplexity(m, load_file(str(tokens_file))["input_ids"], 128, 2).ppl
    assert c["ppl_float32"] == pytest.approx(want, rel=1e-6)
    assert abs(c["diff_pct"]) < 5.0 and c["within"]
    assert bf16.ppl == pytest.approx(fp32.ppl, rel=0.02)
    assert bf16.protocol.dtype == "bfloat16" and bf16.protocol.key != fp32.protocol.key
    assert bf16.weights_bytes < 0.6 * fp32.weights_bytes  # parameters really are bf16 now


def test_check_flags_a_difference_beyond_tolerance(tiny_model_dir, tokens_file):
    r = evaluate_checkpoint(job(tiny_model_dir, tokens_file, "bfloat16", check_windows=1, check_tolerance_pct=0.0))
    assert r.check["diff_pct"] != 0.0 and r.check["within"] is False


def test_cast_model_keeps_rotary_buffers_and_packed_modules(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from llmquant.formats.intweight import IntWeight
    from llmquant.formats.qlinear import QuantLinear
    from llmquant.quantize.grid import group_index, quantize_rtn

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lin = m.model.layers[0].mlp.down_proj
    q, s, z = quantize_rtn(lin.weight.data, 4, 32, True)
    m.model.layers[0].mlp.down_proj = QuantLinear(IntWeight(q, s, z, group_index(128, 32), 4))
    cast_model(m, torch.bfloat16)
    assert m.model.embed_tokens.weight.dtype == torch.bfloat16 and m.lm_head.weight.dtype == torch.bfloat16
    assert m.model.rotary_emb.inv_freq.dtype == torch.float32
    assert m.model.layers[0].mlp.down_proj.scales.dtype == torch.float16


def test_protocol_known_before_running(tiny_model_dir, tokens_file):
    from safetensors.torch import load_file

    j = job(tiny_model_dir, tokens_file, "float32")
    p = protocol_for(j, load_file(str(tokens_file))["input_ids"], "cpu")
    assert p == evaluate_checkpoint(j).protocol


@pytest.fixture(scope="module")
def bf16_dirs(tmp_path_factory, tiny_model_dir):
    """The tiny model stored in bfloat16 and in float16."""
    import shutil

    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("16bit")
    out = {}
    for dtype in (torch.bfloat16, torch.float16):
        d = out[dtype] = root / str(dtype)
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).save_pretrained(d)
        for f in tiny_model_dir.iterdir():
            if "token" in f.name:
                shutil.copy(f, d / f.name)
    return out


@pytest.mark.parametrize("kind", ["dense-bf16", "dense-fp16", "rtn-bf16"])
def test_float32_check_without_a_float32_copy_gives_the_same_numbers(bf16_dirs, tokens_file, tmp_path,
                                                                    monkeypatch, kind):
    """A checkpoint stored in one 16-bit dtype is loaded in it; the float32 check upcasts module by
    module, then the model is cast to the compute dtype (bf16). The same figures as loading it in
    float32 first (the path for other checkpoints)."""
    import llmquant.eval.evaluate as ev
    from llmquant.eval.upcast import stored_dtype

    stored = torch.float16 if kind.endswith("fp16") else torch.bfloat16
    ckpt = bf16_dirs[stored]
    if kind.startswith("rtn"):
        from transformers import AutoTokenizer

        from llmquant.quantize.base import QuantizeContext
        from llmquant.quantize.lazy import lazy_model
        from llmquant.quantize.rtn.quantizer import RTNQuantizer
        from llmquant.quantize.rtn.config import RTNVariant

        src = ckpt
        model, blocks = lazy_model(src)
        v = RTNVariant(name="w4", method="rtn", bits=4, group_size=32, save_dtype="bfloat16")
        ckpt = tmp_path / "w4"
        ckpt.mkdir()
        RTNQuantizer().quantize(model, v, None, ckpt, QuantizeContext(
            device="cpu", tokenizer=AutoTokenizer.from_pretrained(src), blocks=blocks, model_dir=src))
    assert stored_dtype(ckpt) == stored
    import llmquant.formats.load as fl

    loads, real_load = [], fl.load_checkpoint

    def spy(path, dtype, *a, **kw):
        loads.append(dtype)
        return real_load(path, dtype, *a, **kw)

    monkeypatch.setattr(fl, "load_checkpoint", spy)
    j = job(ckpt, tokens_file, "bfloat16", check_windows=2, check_tolerance_pct=5.0)
    new = evaluate_checkpoint(j)
    monkeypatch.setattr(ev, "stored_dtype", lambda *a: None)
    old = evaluate_checkpoint(j)
    assert loads == [str(stored).removeprefix("torch."), "float32"]
    assert new.check == old.check and new.ppl == old.ppl
    assert new.check["ppl_float32"] != new.check["ppl_bfloat16"]  # the check did compute in float32
