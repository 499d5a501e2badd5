"""The output Fisher of mixed's sensitivity (quantize/mixed/fisher.py): the streamed block-by-block
backward against one whole-model autograd pass, the same from a lazily loaded model with its kept
activations spilled to disk, and the Fisher-weighted cost's constant against the outputs directly."""

import pytest
import torch
import torch.nn.functional as F

from llmquant.quantize.gptq.gptq_math import accumulate_hessian
from llmquant.quantize.lazy import lazy_model
from llmquant.quantize.mixed.fisher import output_fisher
from llmquant.quantize.mixed.sensitivity import fisher_cost, row_errors
from tests.conftest import load_fp32


def linear_names(model) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


def direct_fisher(model, ids) -> dict[str, torch.Tensor]:
    """Mean over tokens of (∂ Σ_t CE / ∂y)² per output channel, from whole-model autograd, one sequence
    at a time (the loss is per sequence)."""
    names = linear_names(model)
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, y, n=n: outs.__setitem__(n, y))
             for n, m in model.named_modules() if n in names]
    sums: dict[str, torch.Tensor] = {}
    for b in range(ids.shape[0]):
        logits = model(input_ids=ids[b:b + 1], use_cache=False).logits
        loss = F.cross_entropy(logits[0, :-1], ids[b, 1:], reduction="sum")
        grads = torch.autograd.grad(loss, [outs[n] for n in sorted(names)])
        for n, g in zip(sorted(names), grads):
            sq = g.double().pow(2).reshape(-1, g.shape[-1]).sum(0)
            sums[n] = sums.get(n, 0) + sq
    for h in hooks:
        h.remove()
    return {n: (v / ids.numel()).float() for n, v in sums.items()}


def test_streamed_fisher_equals_whole_model_autograd(tiny_model_dir, tiny_calib):
    ids = tiny_calib[0].input_ids[:4]
    model = load_fp32(tiny_model_dir)
    expect = direct_fisher(model, ids)
    got = output_fisher(model, ids, linear_names(model))
    assert set(got) == set(expect) and len(got) >= 14
    for n in expect:
        assert torch.allclose(got[n], expect[n], rtol=1e-4, atol=1e-12), n
    # the weights are left as they were: no gradients, requires_grad restored
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_lazy_blocks_and_spilled_activations_give_the_same(tiny_model_dir, tiny_calib, tmp_path):
    ids = tiny_calib[0].input_ids[:3]
    eager = output_fisher(load_fp32(tiny_model_dir), ids, linear_names(load_fp32(tiny_model_dir)))
    model, blocks = lazy_model(tiny_model_dir)
    spill = tmp_path / "spill"
    got = output_fisher(model, ids, set(eager), residency=blocks, spill_dir=spill, budget_bytes=1)
    for n in eager:
        assert torch.allclose(got[n], eager[n], rtol=1e-5, atol=1e-12), n
    assert not list(spill.glob("*.safetensors"))  # the kept activations are removed after


def test_fisher_cost_is_half_the_weighted_output_error_per_token():
    g = torch.Generator().manual_seed(1)
    n, T, d, o = 3, 50, 24, 10
    X = torch.randn(n, T, d, generator=g)
    W = torch.randn(o, d, generator=g)
    W_hat = W + 0.1 * torch.randn(o, d, generator=g)
    G = torch.rand(o, generator=g)
    H, _ = accumulate_hessian(None, 0, X)
    dy = X.reshape(-1, d) @ (W - W_hat).T  # the output errors, token by token
    expect = 0.5 * float(((dy ** 2) * G).sum(1).mean())
    assert fisher_cost(row_errors(W, W_hat, H.double()), G, T) == pytest.approx(expect, rel=1e-6)
