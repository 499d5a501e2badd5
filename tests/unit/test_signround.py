"""`method: signround` on the tiny Llama: round to nearest at zero iterations (against the RTN
quantizer's checkpoint), lower perplexity than RTN end to end through the pipeline, resume after a
crash bit-identical, and recipe errors."""

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from llmquant.errors import UserError
from llmquant.quantize import sequential
from llmquant.quantize.base import QuantizeContext
from llmquant.quantize.rtn.config import RTNVariant
from llmquant.quantize.rtn.quantizer import RTNQuantizer
from llmquant.quantize.signround.config import SignRoundVariant
from llmquant.quantize.signround.quantizer import SignRoundQuantizer
from llmquant.recipe import load_recipe
from tests.conftest import load_fp32


def tensors(path: Path) -> dict:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def signround(model_dir, calib, out, work_dir=None, budget=None, **kw):
    ids, tok = calib
    v = SignRoundVariant(name="s", method="signround", **({"bits": 3, "group_size": 32, "iters": 6,
                                                             "batch_size": 4, "save_dtype": "float32"} | kw))
    return SignRoundQuantizer().quantize(load_fp32(model_dir), v, ids, out,
                                         QuantizeContext(tokenizer=tok, work_dir=work_dir,
                                                         activation_budget_bytes=budget))


@pytest.mark.parametrize("sym", [True, False])
def test_zero_iterations_write_the_rtn_checkpoint(tmp_path, tiny_model_dir, tiny_calib, sym):
    ids, tok = tiny_calib
    res = signround(tiny_model_dir, tiny_calib, tmp_path / "s", iters=0, sym=sym, grid="minmax")
    rtn = RTNVariant(name="r", method="rtn", bits=3, group_size=32, sym=sym, save_dtype="float32")
    RTNQuantizer().quantize(load_fp32(tiny_model_dir), rtn, None, tmp_path / "r", QuantizeContext(tokenizer=tok))
    a, b = tensors(tmp_path / "s"), tensors(tmp_path / "r")
    assert sorted(a) == sorted(b)
    assert [k for k in a if not a[k].equal(b[k])] == []
    assert len(res.layers) == 21 and all(r["changed_vs_rtn"] == 0 for r in res.layers)
    qc = json.loads((tmp_path / "s" / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["sym"]) == ("gptq", 3, 32, sym)


def test_zero_iterations_on_the_full_range_grid(tmp_path, tiny_model_dir, tiny_calib):
    """grid: fullrange (the default) at 0 steps: every Linear of the checkpoint holds round to
    nearest on grid.py's full-range grid, negative scales included, as our loader reads it."""
    from functools import partial

    from llmquant.formats import gptq_v1
    from llmquant.quantize.grid import grid_params, quantize_groups

    signround(tiny_model_dir, tiny_calib, tmp_path / "s", iters=0)
    got = tensors(tmp_path / "s")
    model = load_fp32(tiny_model_dir)
    names = sorted(k[:-len(".qweight")] for k in got if k.endswith(".qweight"))
    assert len(names) == 21
    negative = 0
    for name in names:
        layer = gptq_v1.unpack_layer({k.split(".")[-1]: v for k, v in got.items() if k.startswith(name + ".")}, 3)
        q, scales, zeros = quantize_groups(model.get_submodule(name).weight.detach(), 3, 32,
                                           partial(grid_params, bits=3, sym=True, full_range=True))
        assert torch_equal(layer.q, q) and torch_equal(layer.scales.float(), scales) and torch_equal(layer.zeros, zeros)
        negative += int((scales < 0).sum())
    assert negative > 0  # groups whose positive side is the larger


def torch_equal(a, b) -> bool:
    return bool((a.to(b.dtype) == b).all()) and a.shape == b.shape


def test_signround_beats_rtn_end_to_end(tiny_recipe, board_path):
    from llmquant.pipeline import run

    path = tiny_recipe(variants="""
  - {name: rtn3, method: rtn, bits: 3, group_size: 32}
  - {name: sr3, method: signround, bits: 3, group_size: 32, iters: 40, batch_size: 4}
""", extra="""calibration:
  dataset: {source: "builtin:pydoc", split: train}
  n_samples: 16
  seqlen: 128
""")
    summary = run(load_recipe(path))
    ppl = {o.name: o.result.ppl for o in summary.variants}
    assert ppl["sr3"] < ppl["rtn3"]
    manifest = json.loads((summary.run_dir / "variants" / "sr3" / "manifest.json").read_text())
    rows = manifest["summary"]["layers"]
    assert len(rows) == 21 and manifest["summary"]["solved_blocks"] == [0, 1, 2]
    assert all(r["block_loss_best"] <= r["block_loss_first"] for r in rows)
    assert any(r["block_loss_best"] < r["block_loss_first"] for r in rows)
    assert manifest["summary"]["iters"] == 40 and manifest["summary"]["lr"] == pytest.approx(1 / 40)
    assert (manifest["summary"]["target"], manifest["summary"]["grid"]) == ("model", "fullrange")


@pytest.mark.parametrize("target", ["model", "block"])
def test_resume_after_a_crash_is_bit_identical(tmp_path, tiny_model_dir, tiny_calib, crash_after_block, target):
    whole = signround(tiny_model_dir, tiny_calib, tmp_path / "whole", target=target)
    work = tmp_path / "work"
    with crash_after_block(1):
        signround(tiny_model_dir, tiny_calib, tmp_path / "resumed", work_dir=work, target=target)
    resumed = signround(tiny_model_dir, tiny_calib, tmp_path / "resumed", work_dir=work, target=target)
    assert resumed.details["resumed_blocks"] == [0, 1] and resumed.details["solved_blocks"] == [2]
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == \
        (tmp_path / "resumed" / "model.safetensors").read_bytes()
    assert [r["module"] for r in resumed.layers] == [r["module"] for r in whole.layers]
    other = signround(tiny_model_dir, tiny_calib, tmp_path / "other", work_dir=work, iters=7, target=target)
    assert other.details["resumed_blocks"] == []


def test_a_spilled_float_stream_gives_the_same_checkpoint(tmp_path, tiny_model_dir, tiny_calib, monkeypatch):
    """With an activation budget of 1 byte every stream (the loop's, the float one) goes to disk
    and comes back bit-exact; the files are gone afterwards."""
    from llmquant.quantize.activations import Activations

    spilled = []
    real = Activations.__setitem__

    def count(self, b, t):
        real(self, b, t)
        if self.spill_dir is not None and self.spill_dir.name == "float":
            spilled.append(self.spilled)  # batches written to disk so far

    monkeypatch.setattr(Activations, "__setitem__", count)
    signround(tiny_model_dir, tiny_calib, tmp_path / "mem")
    work = tmp_path / "work"
    signround(tiny_model_dir, tiny_calib, tmp_path / "disk", work_dir=work, budget=1)
    # block 0's copy of the embeddings, then each batch once per block: every write went to disk
    assert spilled[-1] == len(spilled) == 3 + 3 * 3
    disk = (tmp_path / "disk" / "model.safetensors").read_bytes()
    assert (tmp_path / "mem" / "model.safetensors").read_bytes() == disk
    assert not list((work / "float").glob("*.safetensors"))


def recorded_batches(monkeypatch) -> list[list]:
    """Patch the quantizer's tune_block to record every block's batches (inputs and targets)."""
    from llmquant.quantize.signround import quantizer

    seen: list[list] = []
    real = quantizer.tune_block

    def spy(block, settings, batches, n, opts, on_step=None):
        seen.append([(batches(b).x.clone(), batches(b).target.clone()) for b in range(n)])
        return real(block, settings, batches, n, opts, on_step)

    monkeypatch.setattr(quantizer, "tune_block", spy)
    return seen


@pytest.mark.parametrize("target", ["model", "block"])
def test_the_targets_are_the_float_models_outputs_or_the_float_blocks(tmp_path, tiny_model_dir, tiny_calib,
                                                                      monkeypatch, target):
    """target: model fits block i to the float model's hidden state after block i (HF's
    output_hidden_states, computed here independently); target: block to the float block on the
    quantized stream, which from block 1 on is not the float model's."""
    import torch

    ids, _ = tiny_calib
    seen = recorded_batches(monkeypatch)
    signround(tiny_model_dir, tiny_calib, tmp_path / "s", batch_size=4, target=target)
    model = load_fp32(tiny_model_dir)
    with torch.no_grad():
        hidden = model(ids.input_ids, output_hidden_states=True).hidden_states  # embeddings, block 0, 1, norm(2)
    assert len(seen) == 3 and all(len(batches) == 3 for batches in seen)
    for i in (0, 1):
        float_out = torch.cat([t for _, t in seen[i]])
        float_in = torch.cat([x for x, _ in seen[i]])
        if target == "model" or i == 0:  # block 0's inputs are the embeddings in both
            torch.testing.assert_close(float_out, hidden[i + 1], rtol=1e-5, atol=1e-5)
        else:
            assert not torch.allclose(float_out, hidden[i + 1], rtol=1e-3, atol=1e-3)
        if i == 1:  # the tuning runs on the quantized stream either way
            assert not torch.allclose(float_in, hidden[1], rtol=1e-3, atol=1e-3)


def bad(tmp_path, variant: dict) -> str:
    doc = {"model": {"source": "some/model"}, "eval": {"dataset": "builtin:pydoc", "seqlen": 128},
           "calibration": {"dataset": "builtin:pydoc"},
           "variants": [{"name": "s", "method": "signround", **variant}]}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p))
    return msg


def test_recipe_errors_name_the_field(tmp_path):
    assert "variants[0].iters" in bad(tmp_path, {"iters": -1})
    assert "variants[0].lr" in bad(tmp_path, {"lr": 0})
    assert "variants[0].batch_size" in bad(tmp_path, {"batch_size": 0})
    msg = bad(tmp_path, {"quantize_lm_head": True})
    assert "quantize_lm_head is not supported by method signround" in msg
    assert "variants[0].bits: got 5" in bad(tmp_path, {"bits": 5})
    assert "variants[0].target" in bad(tmp_path, {"target": "layer"})
    assert "variants[0].grid" in bad(tmp_path, {"grid": "mse"})


def test_a_valid_variant_resolves_autorounds_step_sizes(tmp_path):
    v = SignRoundVariant(name="s", method="signround", iters=50)
    assert v.step_sizes() == (pytest.approx(0.02), pytest.approx(0.02))
    v = SignRoundVariant(name="s", method="signround", iters=50, lr=0.005, minmax_lr=0)
    assert v.step_sizes() == (0.005, 0.0)


class Recorder:
    """A handler that records the loop's calls and changes nothing."""

    state_key = "recorder"

    def __init__(self):
        self.observed, self.solved = 0, []

    def targets(self, index, name, block):
        return {f"{name}.mlp.down_proj": block.mlp.down_proj}

    def begin_block(self, run):
        pass

    def observe(self, group, x):
        self.observed += 1

    def solve(self, group):
        self.solved.extend(group.names)

    def finish_block(self, run):
        return sequential.BlockResult({})

    def restore_block(self, run, state):
        pass


def test_the_unstaged_loop_without_observing_forward(tiny_model_dir, tiny_calib):
    ids, _ = tiny_calib
    model = load_fp32(tiny_model_dir)
    rec = Recorder()
    opts = sequential.SequentialOptions(batch_size=4, staged=False, observe=False, keep_final=True)
    quiet = sequential.run_sequential(model, ids.input_ids, rec, opts)
    assert rec.observed == 0 and rec.solved == [f"model.layers.{i}.mlp.down_proj" for i in range(3)]
    seen = Recorder()
    full = sequential.run_sequential(model, ids.input_ids, seen, sequential.SequentialOptions(
        batch_size=4, staged=False, keep_final=True))
    assert seen.observed == 3 * 3  # three batches reach each block's down_proj
    assert all(a.equal(b) for a, b in zip(quiet.hidden, full.hidden))  # the same outputs either way
    with pytest.raises(ValueError, match="observe=False needs the unstaged loop"):
        sequential.run_sequential(model, ids.input_ids, Recorder(), sequential.SequentialOptions(observe=False))
