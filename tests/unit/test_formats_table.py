"""The format table (llmquant/formats/table.py): every entry is complete, the shape rules say
why a layer cannot be stored, and the generic writer writes what the GPTQ v1 and AWQ GEMM
layouts say, tensor by tensor."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from llmquant import __version__
from llmquant.errors import UserError
from llmquant.formats.detect import QuantSummary
from llmquant.formats.format import CheckpointFormat
from llmquant.formats.intweight import IntWeight
from llmquant.formats.table import FORMATS, MODULES
from llmquant.formats.vllm_compat import VllmVerdict
from llmquant.formats.write import write_quantized
from llmquant.quantize.grid import group_index, quantize_rtn
from llmquant.quantize.awq.config import AWQVariant
from llmquant.quantize.bnb.config import BnbVariant
from llmquant.quantize.rtn.config import RTNVariant
from tests.conftest import load_fp32

CONFIGS = {  # a minimal quantization_config of each format, as its tools write it
    "none": {},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "compressed-tensors": {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                       "strategy": "group", "group_size": 128}}}},
    "bitsandbytes": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
}
LLAMA_BLOCK = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_the_table_lists_the_formats_and_imports_no_torch():
    assert set(FORMATS) == {"none", "gptq", "awq", "compressed-tensors", "bitsandbytes"} == set(CONFIGS)
    code = "import sys, llmquant.formats.table as t; print(sorted(t.FORMATS), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "False"


@pytest.mark.parametrize("method", list(MODULES))
def test_every_format_has_all_its_parts(method):
    fmt = FORMATS[method]
    assert isinstance(fmt, CheckpointFormat) and fmt.quant_method == method and fmt.description
    for part in ("summarize", "modules", "shape_problem", "vllm_verdict", "vllm_args", "compute_note"):
        assert callable(getattr(fmt, part)), f"{method}: {part}"
    assert fmt.loadable, f"{method}: neither read_layers nor load"
    qc = CONFIGS[method]
    summary = fmt.summarize(qc)
    assert isinstance(summary, QuantSummary) and summary.format
    verdict = fmt.vllm_verdict(qc, summary.format, [], "float16", 1, 80)
    assert isinstance(verdict, VllmVerdict) and verdict.quantization
    flags, notes = fmt.vllm_args(qc)
    assert isinstance(flags, list) and isinstance(notes, list)
    info = SimpleNamespace(format=summary.format, method=method, quant_config=qc)
    assert isinstance(fmt.compute_note(info, "float32", "cpu"), str)
    assert fmt.shape_problem(4096, 4096, 4, 128) is None  # an ordinary layer fits every format
    if fmt.writable:
        assert fmt.writes and callable(fmt.pack) and callable(fmt.checkpoint_config)


def test_gptq_and_awq_are_the_writable_formats():
    assert {m for m in FORMATS if FORMATS[m].writable} == {"gptq", "awq"}


@pytest.mark.parametrize("method,shape,bits,group,says", [
    ("gptq", (100, 64), 4, 32, "group size 32 does not divide in_features 100"),
    ("gptq", (68, 64), 4, -1, "in_features 68 is not a multiple of 8"),
    ("gptq", (64, 68), 4, 32, "out_features 68 is not a multiple of 8"),
    ("gptq", (48, 64), 3, -1, "in_features 48 is not a multiple of 32"),
    ("awq", (100, 64), 4, 32, "group size 32 does not divide in_features 100"),
    ("awq", (64, 68), 4, 32, "out_features 68 is not a multiple of 8"),
    ("awq", (64, 64), 3, 32, "AWQ GEMM stores 4 or 8-bit weights, not 3-bit"),
    ("compressed-tensors", (100, 64), 4, 32, "group size 32 does not divide in_features 100"),
    ("compressed-tensors", (68, 64), 4, -1, "in_features 68 is not a multiple of 8"),
    ("compressed-tensors", (64, 64), 2, 32, "not 2-bit"),
])
def test_shape_rules_say_why_a_layer_cannot_be_stored(method, shape, bits, group, says):
    in_f, out_f = shape
    problem = FORMATS[method].shape_problem(in_f, out_f, bits, group)
    assert problem is not None and says in problem


def test_awq_stores_inputs_that_gptq_cannot_pack():
    """AWQ GEMM packs the output dim only: 100 input columns in one group are fine."""
    assert FORMATS["awq"].shape_problem(100, 64, 4, -1) is None
    assert FORMATS["gptq"].shape_problem(100, 64, 4, -1) is not None


class Block(nn.Module):
    def __init__(self, in_f: int, out_f: int):
        super().__init__()
        self.proj = nn.Linear(in_f, out_f)


class Inner(nn.Module):
    def __init__(self, in_f: int, out_f: int):
        super().__init__()
        self.layers = nn.ModuleList([Block(in_f, out_f)])


class Toy(nn.Module):
    def __init__(self, in_f: int, out_f: int):
        super().__init__()
        self.model = Inner(in_f, out_f)
        self.lm_head = nn.Linear(out_f, 8)


@pytest.mark.parametrize("variant,says", [
    (RTNVariant(name="r", method="rtn", bits=4, group_size=32), "out_features 68 is not a multiple of 8"),
    (AWQVariant(name="a", method="awq", bits=4, group_size=32), "out_features 68 is not a multiple of 8"),
])
def test_preflight_checks_each_variant_against_its_format(variant, says):
    from llmquant.preflight import check_shapes

    recipe = SimpleNamespace(path="r.yaml", variants=[variant])
    with pytest.raises(UserError, match=says) as e:
        check_shapes(recipe, Toy(64, 68))
    assert "variants[0].bits" in str(e.value) and "model.layers.0.proj" in str(e.value)
    check_shapes(SimpleNamespace(path="r.yaml", variants=[variant]), Toy(64, 64))  # a shape that fits


def test_preflight_uses_the_awq_rule_for_awq():
    """100 input columns in one group: GPTQ cannot pack them, AWQ GEMM can."""
    from llmquant.preflight import check_shapes

    with pytest.raises(UserError, match="in_features 100 is not a multiple of 8"):
        check_shapes(SimpleNamespace(path="r.yaml", variants=[RTNVariant(name="r", method="rtn", group_size=-1)]),
                     Toy(100, 64))
    check_shapes(SimpleNamespace(path="r.yaml", variants=[AWQVariant(name="a", method="awq", group_size=-1)]),
                 Toy(100, 64))
    check_shapes(SimpleNamespace(path="r.yaml", variants=[BnbVariant(name="b", method="bnb")]), Toy(100, 60))


# --- the generic writer against the layouts, computed here bit by bit -----------------------

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def words(values: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """Pack [rows, n] 4-bit values along dim 1: value k of word j is column 8 j + order[k]."""
    v = values.to(torch.int64)
    rows, n = v.shape
    out = torch.zeros(rows, n // 8, dtype=torch.int64)
    for j in range(n // 8):
        for k in range(8):
            out[:, j] |= v[:, 8 * j + order[k]] << (4 * k)
    return torch.where(out >= 2 ** 31, out - 2 ** 32, out).to(torch.int32)


def rtn_layers(model, names, group_size, sym):
    layers = {}
    for n in names:
        w = model.get_submodule(n).weight.detach()
        q, scales, zeros = quantize_rtn(w, 4, group_size, sym)
        layers[n] = IntWeight(q, scales, zeros, group_index(w.shape[1], group_size), 4)
    return layers


def expected_dense(model, quantized: set[str]) -> dict[str, torch.Tensor]:
    """Every other tensor in fp16 (the save dtype of a float32 model), the tied head once."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if k.rsplit(".", 1)[0] in quantized and k.endswith(".weight"):
            continue
        out[k] = v.to(torch.float16) if v.is_floating_point() else v
    return out


def assert_same_tensors(written: dict, expected: dict):
    assert sorted(written) == sorted(expected)
    for k in expected:
        assert written[k].dtype == expected[k].dtype, k
        assert torch.equal(written[k], expected[k]), k


def test_writer_gptq_matches_the_v1_layout(tmp_path, tiny_model_dir):
    model = load_fp32(tiny_model_dir)
    names = [f"model.layers.{i}.{leaf}" for i in range(3) for leaf in LLAMA_BLOCK]
    layers = rtn_layers(model, names, 32, True)
    variant = RTNVariant(name="r", method="rtn", bits=4, group_size=32)
    qc = write_quantized(model, layers, "gptq", variant, None, tmp_path, extra_config={"damp_percent": 0.01})

    expected = expected_dense(model, set(names))
    for n, layer in layers.items():
        expected[f"{n}.qweight"] = words(layer.q).t().contiguous()  # [in / 8, out]: packed along the input
        expected[f"{n}.qzeros"] = words(layer.zeros.round().to(torch.int32) - 1)  # zero - 1, along the output
        expected[f"{n}.scales"] = layer.scales.to(torch.float16)
        expected[f"{n}.g_idx"] = torch.arange(layer.in_features, dtype=torch.int32) // 32
    assert_same_tensors(load_file(tmp_path / "model.safetensors"), expected)

    want = {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": 4, "group_size": 32, "sym": True,
            "desc_act": False, "static_groups": False, "lm_head": False, "damp_percent": 0.01,
            "meta": {"quantizer": [f"llmquant:{__version__}"]}}
    assert json.loads((tmp_path / "quantize_config.json").read_text()) == want
    want["modules_in_block_to_quantize"] = [LLAMA_BLOCK]
    assert qc == want
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"] == want and cfg["torch_dtype"] == "float16"


def test_writer_awq_matches_the_gemm_layout(tmp_path, tiny_model_dir):
    model = load_fp32(tiny_model_dir)
    skipped = "model.layers.0.mlp.down_proj"
    names = [f"model.layers.{i}.{leaf}" for i in range(3) for leaf in LLAMA_BLOCK]
    layers = rtn_layers(model, [n for n in names if n != skipped], 32, False)
    variant = AWQVariant(name="a", method="awq", bits=4, group_size=32)
    qc = write_quantized(model, layers, "awq", variant, None, tmp_path)

    expected = expected_dense(model, set(layers))
    for n, layer in layers.items():
        expected[f"{n}.qweight"] = words(layer.q.t(), AWQ_ORDER)  # [in, out / 8]: along the output, interleaved
        expected[f"{n}.qzeros"] = words(layer.zeros.round().to(torch.int32), AWQ_ORDER)  # true zeros
        expected[f"{n}.scales"] = layer.scales.to(torch.float16)
    assert_same_tensors(load_file(tmp_path / "model.safetensors"), expected)

    want = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": [skipped]}
    assert qc == want
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"] == want
    assert not (tmp_path / "quantize_config.json").exists()


def test_writer_refuses_a_format_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="does not write 'bitsandbytes'"):
        write_quantized(Toy(64, 64), {}, "bitsandbytes", None, None, Path(tmp_path))


def test_a_format_is_found_by_its_key_or_its_written_name():
    from llmquant.formats.table import format_named

    assert format_named("gptq") is format_named("gptq-v1") is FORMATS["gptq"]
    assert format_named("awq-gemm").quant_method == "awq"
    with pytest.raises(KeyError, match="unknown checkpoint format 'gguf'"):
        format_named("gguf")
