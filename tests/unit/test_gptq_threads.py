"""The same GPTQ checkpoint whatever the thread count ("the same number on every machine").

float32 Hessians differ in their last bits between 1 and 2 threads (the BLAS splits the token
reduction XᵀX differently), and GPTQ's rounding decisions cascade from there; `precision: float64`
makes those differences ~1e-16 of each entry, which no rounding decision sees. The model is sized
so that the float32 path does differ on the CPU measured (9 of its 14 packed layers differ between
1 and 2 threads; Intel Xeon with AVX-512 and AMX). AVX2 vs AVX-512 dispatch is not covered: the block forwards
between Hessians differ there (docs/methods.md)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmquant.quantize.base import CalibrationSet, QuantizeContext
from llmquant.quantize.gptq.config import GPTQVariant
from llmquant.quantize.gptq.quantizer import GPTQQuantizer
from tests.conftest import load_fp32, pydoc_text, train_tiny_llama


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """128 wide, 256-wide MLP, two blocks; 32 x 128 calibration tokens."""
    from transformers import AutoTokenizer

    d = train_tiny_llama(tmp_path_factory.mktemp("wide") / "model", layers=2, hidden=128, intermediate=256,
                         steps=20)
    tok = AutoTokenizer.from_pretrained(d)
    ids = tok(pydoc_text("train"), return_tensors="pt").input_ids
    starts = torch.randint(0, ids.shape[1] - 129, (32,), generator=torch.Generator().manual_seed(0))
    return d, CalibrationSet(torch.stack([ids[0, s:s + 128] for s in starts]), "wide-calib"), tok


def quantized(model_dir: Path, calib: CalibrationSet, tok, out: Path, threads: int, precision: str) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        v = GPTQVariant(name="g", method="gptq", bits=3, group_size=32, precision=precision)
        GPTQQuantizer().quantize(load_fp32(model_dir), v, calib, out, QuantizeContext(tokenizer=tok))
    finally:
        torch.set_num_threads(before)
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def test_float64_gptq_is_bitwise_the_same_on_1_and_2_threads(wide_model, tmp_path):
    d, calib, tok = wide_model
    one = quantized(d, calib, tok, tmp_path / "t1", 1, "float64")
    two = quantized(d, calib, tok, tmp_path / "t2", 2, "float64")
    assert sorted(one) == sorted(two)
    differing = [k for k in one if not torch.equal(one[k], two[k])]
    assert differing == []
