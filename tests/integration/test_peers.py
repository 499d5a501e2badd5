"""Our loader against the peers' own: GPTQModel and llm-compressor quantize the tiny model,
save it in their format, and the weights we read must equal the weights they dequantize.

These peers are not in the shared venv (they pin other versions), so the two reader tests skip
there; run them in a peer's venv, e.g.
  GPTQMODEL_CPU_WORKERS=2 PYTHONPATH=$PWD /work/peers/gptqmodel/bin/python -m pytest -m slow tests/integration/test_peers.py
The recipe-path tests run from the shared venv and start the peers' venvs themselves
(/work/peers/<peer>/bin/python, or LLMQUANT_<PEER>_PYTHON); they skip where those are absent.
"""

import os

import pytest
import torch

pytestmark = pytest.mark.slow


def _calibration(tok, n=16, length=64):
    from tests.conftest import pydoc_text

    ids = tok(pydoc_text("train")[:200_000], return_tensors="pt").input_ids[0]
    return [{"input_ids": ids[i * length:(i + 1) * length].unsqueeze(0),
             "attention_mask": torch.ones(1, length, dtype=torch.long)} for i in range(n)]


@pytest.mark.parametrize("desc_act,sym", [(False, True), (True, False)])
def test_gptqmodel_checkpoint_reads_as_gptqmodel_dequantizes_it(tmp_path, tiny_model_dir, desc_act, sym,
                                                                 monkeypatch):
    pytest.importorskip("gptqmodel")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    monkeypatch.chdir(tmp_path)  # GPTQModel writes its logs under ./logs
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    from llmquant.formats.load import load_checkpoint
    from llmquant.formats.qlinear import QuantLinear

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = QuantizeConfig(bits=4, group_size=32, desc_act=desc_act, sym=sym, damp_percent=0.01)
    model = GPTQModel.load(str(tiny_model_dir), cfg, dtype=torch.float32)
    model.quantize(_calibration(tok), batch_size=1)
    out = tmp_path / "gptqmodel"
    model.save(str(out))
    del model

    ours, _, info = load_checkpoint(out, "float32", "cpu")
    assert info.method == "gptq" and info.bits == 4
    theirs = GPTQModel.load(str(out), device="cpu", dtype=torch.float16)
    compared = 0
    for name, mod in ours.named_modules():
        if isinstance(mod, QuantLinear):
            ref = theirs.model.get_submodule(name)
            w_theirs = ref.dequantize_weight().float()  # [in, out]
            if w_theirs.shape != (mod.in_features, mod.out_features):
                w_theirs = w_theirs.t()
            torch.testing.assert_close(mod.dequantized_weight().t(), w_theirs, rtol=1e-3, atol=1e-3)
            compared += 1
    assert compared == 21


def test_llm_compressor_w4a16_reads_as_compressed_tensors_decompresses_it(tmp_path, tiny_model_dir):
    pytest.importorskip("llmcompressor")
    from compressed_tensors.compressors import ModelCompressor
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmquant.formats.load import load_checkpoint
    from llmquant.formats.qlinear import QuantLinear

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]))
    out = tmp_path / "llmc"
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)

    ours, _, info = load_checkpoint(out, "float32", "cpu")
    assert info.method == "compressed-tensors" and info.bits == 4
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ModelCompressor.from_pretrained(str(out)).decompress(str(out), dense)
    compared = 0
    for name, mod in ours.named_modules():
        if isinstance(mod, QuantLinear):
            torch.testing.assert_close(mod.dequantized_weight(), dense.get_submodule(name).weight.float(),
                                       rtol=1e-3, atol=1e-3)
            compared += 1
    assert compared == 21


# -- the recipe path: peers in their own venvs, run from the shared one -----------------------------

PEER_PYTHON = {"gptqmodel": "/work/peers/gptqmodel/bin/python", "llmcompressor": "/work/peers/llmcompressor/bin/python",
               "autoround": "/work/peers/autoround/bin/python"}


@pytest.mark.parametrize("backend", ["gptqmodel", "llmcompressor"])
def test_recipe_ranks_a_peer_next_to_ours(backend, tiny_recipe, tmp_path, monkeypatch):
    """A recipe with `backend: <peer>` quantizes in the peer's venv (from our calibration crops) and
    the row lands on our board beside ours, tagged with the peer's version. Needs the peer venvs
    (docs/peers.md); set LLMQUANT_<PEER>_PYTHON to point elsewhere."""
    from llmquant.board import Board
    from llmquant.peers import BACKENDS
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    python = os.environ.get(BACKENDS[backend].env_var) or PEER_PYTHON[backend]
    if not os.path.exists(python):
        pytest.skip(f"no {backend} venv at {python}")
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "2")
    path = tiny_recipe(variants=f"""
  - {{name: ours, method: gptq, bits: 4, group_size: 32}}
  - {{name: peer, method: gptq, bits: 4, group_size: 32, backend: {backend}}}
  - {{name: rtn, method: rtn, bits: 4, group_size: 32}}
""", extra=f"""calibration:
  dataset: {{source: "builtin:pydoc", split: train}}
  n_samples: 16
  seqlen: 128
peers: {{{backend}: {python}}}
""")
    summary = run(load_recipe(path))
    out = {o.name: o for o in summary.variants}
    peer = out["peer"].summary
    assert peer["backend"].startswith(f"{backend} ") and peer["format"] == BACKENDS[backend].formats["gptq"]
    assert len(peer["layers"]) == 21
    # a GPTQ solve from the same crops: near ours, better than round-to-nearest
    assert out["peer"].result.ppl < out["rtn"].result.ppl
    assert abs(out["peer"].result.ppl / out["ours"].result.ppl - 1) < 0.05
    rows = {r.variant: r.data for r in Board(tmp_path / "board.sqlite").rows()}
    assert rows["peer"]["backend"] == peer["backend"] and rows["ours"]["backend"] is None


def test_recipe_ranks_autoround_next_to_our_signround(tiny_recipe, tmp_path):
    """auto-round's SignRound from our crops, beside ours at the same iterations: both better than
    round to nearest, and within 10 % of each other (the two differ in what a block is fitted to:
    docs/methods.md). Needs the auto-round venv (docs/peers.md)."""
    from llmquant.peers import BACKENDS
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    python = os.environ.get(BACKENDS["autoround"].env_var) or PEER_PYTHON["autoround"]
    if not os.path.exists(python):
        pytest.skip(f"no autoround venv at {python}")
    path = tiny_recipe(variants="""
  - {name: ours, method: signround, bits: 3, group_size: 32, iters: 40, batch_size: 4}
  - {name: peer, method: signround, bits: 3, group_size: 32, iters: 40, batch_size: 4, backend: autoround}
  - {name: rtn, method: rtn, bits: 3, group_size: 32}
""", extra=f"""calibration:
  dataset: {{source: "builtin:pydoc", split: train}}
  n_samples: 16
  seqlen: 128
peers: {{autoround: {python}}}
""")
    summary = run(load_recipe(path))
    out = {o.name: o for o in summary.variants}
    peer = out["peer"].summary
    assert peer["backend"].startswith("autoround ") and peer["format"] == "gptq-v1" and len(peer["layers"]) == 21
    assert peer["peer"]["peer_config"]["iters"] == 40 and peer["peer"]["peer_config"]["batch_size"] == 4
    assert out["peer"].result.ppl < out["rtn"].result.ppl and out["ours"].result.ppl < out["rtn"].result.ppl
    assert abs(out["peer"].result.ppl / out["ours"].result.ppl - 1) < 0.10
