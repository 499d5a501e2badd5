"""Conformance over the two tables: every (method, checkpoint format) pair that METHODS says a
method writes goes the whole way on the tiny model — the recipe validates, preflight passes,
the quantizer writes the checkpoint, `inspect` reads it, our loader loads it, each packed layer
computes exactly its format's de-quantized weight, and the vLLM verdict is stated.

A new METHODS entry or a new format in an entry's `formats` is tested here by registering it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from llmquant.formats.load import inspect_checkpoint, load_checkpoint, read_tensors
from llmquant.formats.table import FORMATS
from llmquant.inspect import inspect_path
from llmquant.preflight import preflight
from llmquant.quantize import METHODS, config_class, loads_own_model, quantizer_for
from llmquant.quantize.base import QuantizeContext
from llmquant.quantize.metrics import relative_error
from llmquant.recipe import parse_recipe

PAIRS = [(m, f) for m, entry in METHODS.items() for f in entry.formats]
SETTINGS = {"rtn": {"bits": 4, "group_size": 32}, "gptq": {"bits": 4, "group_size": 32},
            "awq": {"bits": 4, "group_size": 32, "n_grid": 4, "clip_n_grid": 4}, "bnb": {"mode": "int8"},
            "mixed": {"budget": {"bits": 4.5}, "candidate_group_sizes": [32, 64], "estimate": "rtn"},
            "signround": {"bits": 4, "group_size": 32, "iters": 3, "batch_size": 2}}


def test_every_method_names_its_config_and_formats():
    for method, entry in METHODS.items():
        cfg = config_class(method)
        assert cfg.model_fields["method"].annotation.__args__ == (method,)
        assert entry.formats and all(f in FORMATS for f in entry.formats), method
        if "format" in cfg.model_fields:  # the choice a variant has is exactly the table's
            assert cfg.model_fields["format"].annotation.__args__ == entry.formats
            assert cfg.model_fields["format"].default == entry.formats[0]
        else:
            assert len(entry.formats) == 1, f"{method} writes several formats but its config has no `format` field"


def _recipe(tmp_path: Path, model_dir: Path, method: str, fmt: str):
    variant = {"name": "v", "method": method, **SETTINGS[method]}
    if "format" in config_class(method).model_fields:
        variant["format"] = fmt
    doc = {
        "model": {"source": str(model_dir), "dtype": "float32", "device": "cpu"},
        "calibration": {"dataset": {"source": "builtin:pydoc", "split": "train"}, "n_samples": 4, "seqlen": 32},
        "eval": {"dataset": {"source": "builtin:pydoc", "split": "test"}, "seqlen": 64, "max_windows": 2},
        "variants": [variant],
        "output": {"dir": str(tmp_path / "run"), "board": str(tmp_path / "board.sqlite")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return parse_recipe(yaml.safe_load(path.read_text()), path)


def _dequantized(module: nn.Module) -> torch.Tensor:
    """The weight a loaded quantized Linear computes with: its output for the identity, minus the bias."""
    eye = torch.eye(module.in_features, dtype=torch.float32)
    out = module(eye).float()
    if getattr(module, "bias", None) is not None:
        out = out - module.bias.float()
    return out.t()


@pytest.mark.parametrize("method,fmt", PAIRS, ids=[f"{m}-{f}" for m, f in PAIRS])
def test_method_writes_a_checkpoint_that_round_trips(tmp_path, tiny_model_dir, tiny_calib, method, fmt):
    entry = METHODS[method]
    missing = [p for p in entry.requires if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"method {method} needs {', '.join(missing)} ({entry.install})")
    from transformers import AutoModelForCausalLM

    recipe = _recipe(tmp_path, tiny_model_dir, method, fmt)  # validates
    variant = recipe.variants[0]
    report = preflight(recipe)  # shape rules of the format, the method's own checks, packages
    assert report.plan is not None

    calib, tok = tiny_calib
    model = None if loads_own_model(variant) else AutoModelForCausalLM.from_pretrained(tiny_model_dir,
                                                                                         dtype=torch.float32)
    out = tmp_path / "ckpt"
    result = quantizer_for(variant, {}).quantize(model, variant, calib if entry.needs_calibration else None, out,
                                                 QuantizeContext(tokenizer=tok, model_dir=tiny_model_dir,
                                                                 work_dir=tmp_path / "work"))
    assert result.layers and all(r["rel_error"] is not None and r["rel_error"] > 0 for r in result.layers)

    info = inspect_checkpoint(out)
    assert info.method == fmt  # the checkpoint is in the format asked for
    shown = inspect_path(out)
    assert shown.n_quantized == len(result.layers)  # inspect finds every layer the quantizer reported
    assert shown.vllm is not None and shown.vllm.to_dict()  # a stated verdict, whatever it is

    # what each layer computes once loaded, against the weight the quantizer started from: a method
    # that leaves its de-quantized weights in the model (GPTQ, AWQ) must match them exactly; one that
    # leaves the float weights (RTN; bnb loads its own) must reproduce the error it reported
    loaded, _, _ = load_checkpoint(out, "float32", "cpu")
    reference = (dict(model.named_parameters()) if model is not None
                 else read_tensors(tiny_model_dir, lambda k: k.endswith(".weight")))
    reader = FORMATS[fmt].read_layers
    if reader is not None:  # the format's own reading agrees with the loaded layers
        assert set(dict(reader(out, info, read_tensors(out)))) == {r["module"] for r in result.layers}
    with torch.no_grad():
        for row in result.layers:
            layer = loaded.get_submodule(row["module"])
            computed = _dequantized(layer)
            ref = reference[f"{row['module']}.weight"].float()
            err = relative_error(ref, computed)
            assert err < 1e-5 or err == pytest.approx(row["rel_error"], rel=1e-3, abs=1e-6), row["module"]


def test_a_format_the_method_does_not_write_is_one_line_naming_the_allowed(tmp_path, tiny_model_dir):
    from llmquant.errors import UserError

    doc = {"model": {"source": str(tiny_model_dir)}, "eval": {"dataset": "builtin:pydoc"},
           "variants": [{"name": "v", "method": "rtn", "format": "bitsandbytes"}]}
    with pytest.raises(UserError) as e:
        parse_recipe(doc, tmp_path / "r.yaml")
    msg = str(e.value)
    assert "\n" not in msg and "variants[0].format" in msg and "'gptq'" in msg and "'awq'" in msg
    doc["variants"][0].update(format="awq", bits=3)
    with pytest.raises(UserError, match=r"format awq holds 4-bit weights, not 3-bit"):
        parse_recipe(doc, tmp_path / "r.yaml")
