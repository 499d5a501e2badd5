"""bitsandbytes variants on the tiny model: quantize (transformers + bitsandbytes) -> save ->
reload with our loader -> logits against references computed here from the saved tensors."""

import json

import pytest
import torch
from safetensors import safe_open

pytest.importorskip("bitsandbytes")

from llmquant.errors import UserError  # noqa: E402
from llmquant.formats.load import inspect_checkpoint, load_checkpoint  # noqa: E402
from llmquant.quantize.base import QuantizeContext  # noqa: E402
from llmquant.quantize.bnb.quantizer import BnbQuantizer  # noqa: E402
from llmquant.recipe import parse_recipe  # noqa: E402
from llmquant.quantize.bnb.config import BnbVariant

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def bnb_ckpts(tmp_path_factory, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = {}
    for name, kw in {"int8": {"mode": "int8"}, "nf4": {"mode": "nf4"},
                     "nf4dq": {"mode": "nf4", "double_quant": True}, "fp4": {"mode": "fp4"}}.items():
        d = tmp_path_factory.mktemp("bnb") / name
        v = BnbVariant(name=name, method="bnb", **kw)
        summary = BnbQuantizer().quantize(None, v, None, d, QuantizeContext(tokenizer=tok, model_dir=tiny_model_dir))
        out[name] = (d, summary)
    return out


def tensors(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def base_model(model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():  # the checkpoint stores unquantized tensors in fp16
        for p in m.parameters():
            p.copy_(p.half().float())
    return m.eval()


def llm_int8_forward(cb, scb, threshold, bias=None):
    """LLM.int8 as bitsandbytes documents and implements it (fp16 input rounding, outlier
    columns >= threshold kept in the input dtype, int8 row-wise activations and weights)."""
    w_deq = cb.float() * (scb.float().unsqueeze(1) / 127.0)

    def forward(x):
        a = x.reshape(-1, x.shape[-1])
        a16 = a.half().float()
        outlier = a16.abs() >= threshold if threshold > 0 else torch.zeros_like(a16, dtype=torch.bool)
        cols = outlier.any(0)
        rest = a16.masked_fill(outlier, 0)
        row = rest.abs().amax(1, keepdim=True)
        ca = torch.round(rest * (127.0 / row)).clamp(-127, 127)
        if a.shape[0] > 1:
            ca[:, cols] = 0
        out = (ca @ cb.float().t()) * (row * scb.float().unsqueeze(0)) / (127.0 * 127.0)
        out = out + a[:, cols] @ w_deq[:, cols].t()
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], cb.shape[0])

    return forward


def nf4_dequantize(packed, absmax, quant_map, shape):
    """4-bit weights as saved: two codes per byte, first in the high nibble; one absmax per 64."""
    b = packed.reshape(-1).to(torch.int64)
    codes = torch.stack([b >> 4, b & 0xF], dim=1).reshape(-1)[: shape[0] * shape[1]]
    vals = quant_map[codes].reshape(-1, 64) * absmax.reshape(-1, 1)
    return vals.reshape(shape)


def sample_ids(tok):
    return tok("def f(x):\n    return x * 2  # doubles its argument", return_tensors="pt").input_ids


def test_int8_checkpoint_layout_and_weights(bnb_ckpts, tiny_model_dir):
    d, summary = bnb_ckpts["int8"]
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes" and qc["load_in_8bit"] is True and qc["llm_int8_threshold"] == 6.0
    assert summary.format == "bnb-int8" and summary.config["bits"] == 8
    assert len(summary.layers) == 21 and all(0 < r["rel_error"] < 0.02 for r in summary.layers)
    t = tensors(d)
    w = base_model(tiny_model_dir).model.layers[1].mlp.up_proj.weight.detach()
    name = "model.layers.1.mlp.up_proj"
    absmax = w.abs().amax(1)
    assert t[f"{name}.weight"].dtype == torch.int8
    torch.testing.assert_close(t[f"{name}.SCB"], absmax)
    assert torch.equal(t[f"{name}.weight"], torch.round(w * (127.0 / absmax.unsqueeze(1))).to(torch.int8))
    assert t["model.embed_tokens.weight"].dtype == torch.float16  # save_dtype auto


def test_int8_reload_matches_llm_int8_reference(bnb_ckpts, tiny_model_dir):
    d, _ = bnb_ckpts["int8"]
    model, tok, info = load_checkpoint(d, "float32", "cpu")
    assert info.format == "bnb-int8" and info.bits == 8
    t = tensors(d)
    # every layer, on an input with an outlier column: the documented LLM.int8 computation
    g = torch.Generator().manual_seed(0)
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJ:
            x = torch.randn(1, 12, mod.in_features, generator=g) * 2
            x[0, :, 3] = 9.0
            with torch.no_grad():
                want = llm_int8_forward(t[f"{name}.weight"], t[f"{name}.SCB"], 6.0)(x)
                torch.testing.assert_close(mod(x), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    # the whole model: activation rounding flips compound, so a looser bound, well under int8's effect
    ref = base_model(tiny_model_dir)
    for name, mod in ref.named_modules():
        if name.rsplit(".", 1)[-1] in PROJ:
            mod.forward = llm_int8_forward(t[f"{name}.weight"], t[f"{name}.SCB"], 6.0)
    x = sample_ids(tok)
    with torch.no_grad():
        got, want = model(x).logits, ref(x).logits
        dense = base_model(tiny_model_dir)(x).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert (got - want).abs().max() < 0.5 * (got - dense).abs().max()


def _dequantized_reference(t, model_dir):
    """Float model whose 4-bit layers hold the weights decoded from the file."""
    ref = base_model(model_dir)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if name.rsplit(".", 1)[-1] in PROJ:
                mod.weight.copy_(nf4_dequantize(t[f"{name}.weight"], t[f"{name}.weight.absmax"],
                                                t[f"{name}.weight.quant_map"], mod.weight.shape))
    return ref


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_reload_matches_dequantized_reference(bnb_ckpts, tiny_model_dir, kind):
    import bitsandbytes as bnb

    d, summary = bnb_ckpts[kind]
    assert summary.config["group_size"] == 64 and all(r["rel_error"] < 0.2 for r in summary.layers)
    t = tensors(d)
    qmap = t["model.layers.0.self_attn.q_proj.weight.quant_map"]
    if kind == "nf4":
        assert qmap[0] == -1 and qmap[7] == 0 and qmap[15] == 1 and torch.all(qmap.diff() > 0)
    ref = _dequantized_reference(t, tiny_model_dir)
    x = sample_ids(load_checkpoint(d, "float32", "cpu")[1])

    # exact path: the weights as loaded, and fp32 matmuls (bitsandbytes' fused CPU kernel off)
    model, _, info = load_checkpoint(d, "float32", "cpu")
    assert info.format == f"bnb-{kind}" and info.bits == 4
    for name, mod in model.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            # dequantize_4bit answers in the quant state's dtype (fp16, the dtype quantized from);
            # the matmul path dequantizes straight into the activation dtype (fp32)
            w = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
            assert torch.equal(w, ref.get_submodule(name).weight.half()), name
            mod.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        want = ref(x).logits
        torch.testing.assert_close(model(x).logits, want, rtol=1e-4, atol=1e-4)

    # as evaluated: on AVX512-BF16 CPUs the first forward repacks and the matmuls run in bf16
    model, _, _ = load_checkpoint(d, "float32", "cpu")
    with torch.no_grad():
        first, second = model(x).logits, model(x).logits
    assert torch.equal(first, second)
    torch.testing.assert_close(first, want, rtol=0.05, atol=0.05)


def test_double_quant_reloads_close_to_plain_nf4(bnb_ckpts):
    plain, _ = bnb_ckpts["nf4"]
    dq, _ = bnb_ckpts["nf4dq"]
    t = tensors(dq)
    assert t["model.layers.0.self_attn.q_proj.weight.absmax"].dtype == torch.uint8  # absmax quantized
    assert t["model.layers.0.self_attn.q_proj.weight.nested_absmax"].dtype == torch.float32
    a, tok, _ = load_checkpoint(plain, "float32", "cpu")
    b, _, _ = load_checkpoint(dq, "float32", "cpu")
    x = sample_ids(tok)
    with torch.no_grad():
        torch.testing.assert_close(a(x).logits, b(x).logits, rtol=0.05, atol=0.05)


def test_bnb_in_a_recipe_quantizes_evaluates_and_ranks(tiny_recipe, board_path):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    recipe = tiny_recipe("""
  - {name: int8, method: bnb, mode: int8}
  - {name: nf4, method: bnb, mode: nf4, double_quant: true}
""")
    summary = run(load_recipe(recipe))
    res = {o.name: o for o in summary.variants}
    base = summary.baseline
    assert res["int8"].summary["format"] == "bnb-int8" and res["nf4"].summary["format"] == "bnb-nf4"
    assert res["int8"].result.env["format"] == "bnb-int8"
    assert res["int8"].result.env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # every result says
    assert "LLM.int8" in res["int8"].result.env["compute"] and "NF4" in res["nf4"].result.env["compute"]
    assert abs(res["int8"].result.ppl / base.ppl - 1) < 0.02
    assert res["nf4"].result.ppl > res["int8"].result.ppl
    ckpt = res["nf4"].checkpoint
    assert res["nf4"].result.size_bytes == (ckpt / "model.safetensors").stat().st_size
    assert res["nf4"].result.size_bytes < res["int8"].result.size_bytes < base.size_bytes
    assert res["nf4"].result.weights_bytes > 0
    from llmquant.board import Board

    rows = {r.variant: r for r in Board(summary.board_path).rows(run="tiny")}
    assert rows["int8"].method == "bnb" and rows["int8"].bits == 8 and rows["nf4"].bits == 4
    assert rows["nf4"].format == "bnb-nf4"
    assert summary.decision.winner is not None


def test_recipe_validation_of_bnb_fields():
    def parse(v):
        return parse_recipe({"model": {"source": "x"}, "eval": {"dataset": "builtin:pydoc"}, "variants": [v]}, "r.yaml")

    v = parse({"name": "a", "method": "bnb", "mode": "int8", "threshold": 4.0}).variants[0]
    assert v.bits == 8 and v.threshold == 4.0 and v.group_size is None
    assert parse({"name": "b", "method": "bnb"}).variants[0].mode == "nf4"
    with pytest.raises(UserError, match=r"r.yaml: variants\[0\].*double_quant only apply to mode nf4 or fp4, not int8"):
        parse({"name": "a", "method": "bnb", "mode": "int8", "double_quant": True})
    with pytest.raises(UserError, match=r"threshold only applies to mode int8, not nf4"):
        parse({"name": "a", "method": "bnb", "mode": "nf4", "threshold": 3})
    with pytest.raises(UserError, match=r"variants\[0\].mode: got 'int4'"):
        parse({"name": "a", "method": "bnb", "mode": "int4"})


def test_missing_bitsandbytes_is_a_user_error(monkeypatch, tmp_path, bnb_ckpts):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(UserError, match=r"needs the bitsandbytes package: pip install 'llmquant\[bnb\]'"):
        load_checkpoint(bnb_ckpts["int8"][0], "float32", "cpu")
    assert inspect_checkpoint(bnb_ckpts["int8"][0]).method == "bitsandbytes"


def test_preflight_names_the_missing_package(monkeypatch, tmp_path):
    import importlib.util

    from llmquant.preflight import check_packages

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    r = parse_recipe({"model": {"source": "x"}, "eval": {"dataset": "builtin:pydoc"},
                      "variants": [{"name": "a", "method": "rtn"}, {"name": "b", "method": "bnb"}]}, tmp_path / "r.yaml")
    with pytest.raises(UserError, match=r"r.yaml: variants\[1\].method: 'bnb' needs bitsandbytes: "
                                         r"pip install 'llmquant\[bnb\]'"):
        check_packages(r)


def test_inspect_bnb_checkpoints(bnb_ckpts, tmp_path):
    import shutil

    from llmquant.inspect import inspect_path

    r8 = inspect_path(bnb_ckpts["int8"][0])
    assert (r8.format, r8.bits, r8.n_quantized, r8.vllm.quantization) == ("bnb-int8", [8], 21, "bitsandbytes")
    assert r8.vllm.servable and r8.quantized[0]["group_size"] is None
    r4 = inspect_path(bnb_ckpts["nf4"][0])
    assert (r4.format, r4.bits, r4.group_sizes, r4.n_quantized) == ("bnb-nf4", [4], [64], 21)
    assert {q["modules"]: q["shape"] for q in r4.quantized}["model.layers.*.mlp.down_proj"] == [64, 128]
    odd = tmp_path / "odd"
    shutil.copytree(bnb_ckpts["nf4"][0], odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["quantization_config"]["bnb_4bit_quant_storage"] = "float16"
    (odd / "config.json").write_text(json.dumps(cfg))
    r = inspect_path(odd)
    assert not r.vllm.servable and "accepts uint8 only" in {f.code: f for f in r.vllm.findings}["bnb-quant-storage"].reason
