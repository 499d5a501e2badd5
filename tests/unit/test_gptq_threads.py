"""The same GPTQ checkpoint whatever the thread count and the CPU's vector width (issue: "the same
number on every machine"). float32 Hessians differ in their last bits between 1 and 2 threads (the
BLAS splits the token reduction XᵀX differently), and GPTQ's rounding decisions cascade from
there; `precision: float64` makes those differences ~1e-16 of each entry, which no rounding
decision sees. The model is sized so that the float32 path does differ on the CPU measured (9 of
its 14 packed layers differ between 1 and 2 threads; AMD EPYC, AVX-512)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmquant.quantize.base import CalibrationSet, QuantizeContext
from llmquant.quantize.gptq.config import GPTQVariant
from llmquant.quantize.gptq.quantizer import GPTQQuantizer
from tests.conftest import load_fp32, pydoc_text, train_tiny_llama

ROOT = Path(__file__).resolve().parents[2]


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


def digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_float64_gptq_is_bitwise_the_same_on_1_and_2_threads(wide_model, tmp_path):
    d, calib, tok = wide_model
    one = quantized(d, calib, tok, tmp_path / "t1", 1, "float64")
    two = quantized(d, calib, tok, tmp_path / "t2", 2, "float64")
    assert sorted(one) == sorted(two)
    differing = [k for k in one if not torch.equal(one[k], two[k])]
    assert differing == []


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"),
                    reason="the CPU dispatches AVX2 already: nothing to compare against")
def test_float64_gptq_is_the_same_under_avx2_dispatch(wide_model, tmp_path):
    """The same quantization in a child process that torch and oneDNN dispatch as on an AVX2-only
    CPU (the CPUs CI and users may have), against this process's."""
    d, calib, tok = wide_model
    here = digest(quantized(d, calib, tok, tmp_path / "here", 2, "float64"))
    torch.save(calib.input_ids, tmp_path / "ids.pt")
    child = (
        "import sys, torch\n"
        "sys.path[:0] = [sys.argv[1]]\n"
        "from tests.unit.test_gptq_threads import quantized, digest\n"
        "from llmquant.quantize.base import CalibrationSet\n"
        "from transformers import AutoTokenizer\n"
        "from pathlib import Path\n"
        "ids = torch.load(sys.argv[3])\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[2])\n"
        "print(digest(quantized(Path(sys.argv[2]), CalibrationSet(ids, 'wide-calib'), tok, Path(sys.argv[4]), 2,"
        " 'float64')))\n")
    env = os.environ | {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    (tmp_path / "avx2").mkdir()
    r = subprocess.run([sys.executable, "-c", child, str(ROOT), str(d), str(tmp_path / "ids.pt"),
                        str(tmp_path / "avx2")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == here
