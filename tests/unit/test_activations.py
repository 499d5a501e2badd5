"""Calibration activations between blocks: kept within a budget (the rest spilled to disk and
read back exactly), optionally in bfloat16; the quantized result does not depend on the budget."""

import hashlib

import pytest
import torch

from llmquant.quantize.activations import Activations
from llmquant.quantize.base import CalibrationSet, QuantizeContext
from llmquant.quantize.gptq.quantizer import GPTQQuantizer
from llmquant.quantize.lazy import lazy_model
from llmquant.quantize.gptq.config import GPTQVariant
from tests.unit.test_streamed_checkpoint import make_model


def batches(n=5):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 16, 8, generator=g) for _ in range(n)]


def test_batches_past_the_budget_spill_and_come_back_exact(tmp_path):
    xs = batches()
    per = xs[0].numel() * 4
    acts = Activations(budget_bytes=2 * per, spill_dir=tmp_path / "spill")
    for x in xs:
        acts.append(x)
    assert len(acts) == 5 and acts.spilled == 3
    assert len(list((tmp_path / "spill").glob("*.safetensors"))) == 3
    assert all(torch.equal(acts[b], xs[b]) for b in range(5))
    acts[4] = xs[0] * 2  # replaced in place: still exact, still within the budget
    assert torch.equal(acts[4], xs[0] * 2) and acts._bytes() <= 2 * per
    acts.clear()
    assert not list((tmp_path / "spill").glob("*.safetensors"))
    with pytest.raises(IndexError):
        acts[5]


def test_bfloat16_storage_rounds_and_restores_the_dtype():
    x = batches(1)[0]
    acts = Activations(store_dtype=torch.bfloat16)
    acts.append(x)
    assert acts._mem[0].dtype == torch.bfloat16 and acts._mem[0].numel() * 2 == x.numel() * 2
    assert acts[0].dtype == torch.float32 and torch.equal(acts[0], x.to(torch.bfloat16).float())


def test_gptq_checkpoint_does_not_depend_on_the_activation_budget(tmp_path, monkeypatch):
    from llmquant.quantize import sequential

    made, limits = [], []
    real_acts, real_limit = sequential._activations, sequential.parked_limit
    monkeypatch.setattr(sequential, "_activations", lambda o, d: made.append(real_acts(o, d)) or made[-1])
    monkeypatch.setattr(sequential, "parked_limit", lambda *a: limits.append(real_limit(*a)) or limits[-1])
    src = make_model(tmp_path / "src", tie=False, layers=2)
    calib = CalibrationSet(torch.randint(0, 128, (12, 1024), generator=torch.Generator().manual_seed(2)), "budget")  # 3 batches
    variant = GPTQVariant(name="g", method="gptq", bits=4, group_size=32)
    quantizer = GPTQQuantizer()
    out = {}
    for name, budget in (("free", None), ("tight", 1)):  # 1 byte: every batch spilled, one parked at a time
        model, blocks = lazy_model(src)
        quantizer.quantize(model, variant, calib, tmp_path / name,
                           QuantizeContext(blocks=blocks, work_dir=tmp_path / f"work-{name}",
                                           activation_budget_bytes=budget))
        out[name] = hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest()
    assert made[0].spilled == 0 and limits[:2] == [None, None]  # free: all in memory, all batches parked
    assert made[1].spilled > 0 and limits[2:] == [1, 1]  # tight: spilled, one batch parked at a time
    assert out["free"] == out["tight"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_holds_one_block_and_keeps_activations_on_the_cpu(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from llmquant.quantize import sequential

    src = make_model(tmp_path / "src", tie=False, layers=6)
    calib = CalibrationSet(torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(3)), "cuda")
    variant = GPTQVariant(name="g", method="gptq", bits=4, group_size=32)
    seen = []
    real = sequential._activations

    def spy(options, device):
        acts = real(options, device)
        seen.append(acts)
        return acts

    monkeypatch.setattr(sequential, "_activations", spy)
    torch.cuda.reset_peak_memory_stats()
    model, blocks = lazy_model(src)
    GPTQQuantizer().quantize(model, variant, calib, tmp_path / "gpu", QuantizeContext(device="cuda", blocks=blocks))
    peak = torch.cuda.max_memory_allocated()
    model, blocks = lazy_model(src)
    GPTQQuantizer().quantize(model, variant, calib, tmp_path / "cpu", QuantizeContext(device="cpu", blocks=blocks))
    block_bytes = sum(p.numel() for p in model.model.layers[0].parameters()) * 4
    assert seen[0].store_device == "cpu"
    assert peak < 3 * block_bytes + (64 << 20)  # one block (and its solver state), not six
    gpu, cpu = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("gpu", "cpu"))
    assert set(gpu) == set(cpu) and all(gpu[k].shape == cpu[k].shape and gpu[k].dtype == cpu[k].dtype for k in cpu)
    scale_diff = max(float((gpu[k].float() - cpu[k].float()).abs().max() / cpu[k].float().abs().max())
                     for k in cpu if k.endswith(".scales"))
    assert scale_diff < 0.05  # the same solve, up to GPU rounding
