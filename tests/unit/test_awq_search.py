"""What the AWQ scale search scores: the recorder's two ways of choosing calibration tokens (whole
samples for attention, every k-th token of every sample for a token-wise MLP), checked against
the tokens picked by hand, and the loss computed on them against a hand-written MSE."""

import pytest
import torch
from torch import nn

from llmquant.quantize.awq import awq_arch
from llmquant.quantize.awq.quantizer import AWQHandler
from llmquant.quantize.awq.awq_math import fake_quantize, scaled_fake_quantize
from llmquant.quantize.awq.awq_search import CallRecorder, module_loss
from llmquant.quantize.awq.config import AWQVariant


class MLP(nn.Module):
    def __init__(self, d=16, h=24):
        super().__init__()
        self.up = nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x, scale=None):
        y = self.down(torch.relu(self.up(x)))
        return y if scale is None else y * scale


def batches(seed=0, shapes=((2, 10), (3, 10), (1, 10))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, 16, generator=g) for b, t in shapes]


def test_token_stride_keeps_every_kth_token_across_calls_and_chunks():
    mlp = MLP()
    xs = batches()
    rec = CallRecorder(mlp, None, torch.float32, bytes_per_token=4 * 16, max_chunk_bytes=4 * 16 * 7, token_stride=4)
    with torch.no_grad():
        for x in xs:
            mlp(x)
    rec.remove()
    expected = torch.cat([x.reshape(-1, 16) for x in xs])[0::4]  # the stride runs on across calls
    got = torch.cat([a[0].reshape(-1, 16) for a, _ in rec.calls])
    assert torch.equal(got, expected)
    assert rec.tokens == expected.shape[0] == 15
    assert all(a[0].shape[1] <= 7 for a, _ in rec.calls)  # chunks within the memory bound
    mlp(xs[0])  # the hook is gone
    assert rec.tokens == 15


def test_a_call_with_other_arguments_falls_back_to_whole_samples():
    mlp = MLP()
    xs = batches()
    rec = CallRecorder(mlp, 3, torch.float32, bytes_per_token=64, max_chunk_bytes=1 << 20, token_stride=4)
    with torch.no_grad():
        for x in xs:
            mlp(x, scale=torch.tensor(2.0))
    rec.remove()
    assert rec.token_stride is None
    got = torch.cat([a[0] for a, _ in rec.calls])
    assert torch.equal(got, torch.cat(xs)[:3])  # the first 3 samples, whole


def test_module_loss_on_recorded_tokens_is_the_mse_on_those_tokens():
    torch.manual_seed(1)
    mlp = MLP()
    xs = batches(seed=2)
    rec = CallRecorder(mlp, None, torch.float32, bytes_per_token=64, max_chunk_bytes=1 << 20, token_stride=3)
    with torch.no_grad():
        for x in xs:
            mlp(x)
    rec.remove()
    quant = lambda w: fake_quantize(w, 4, 8, True)  # noqa: E731
    w = mlp.up.weight.detach()
    s = torch.rand(16) + 0.5
    loss = module_loss(rec, ["up.weight"], [w], [quant], torch.device("cpu"))(s)
    tokens = torch.cat([x.reshape(-1, 16) for x in xs])[0::3]
    w_hat = scaled_fake_quantize(w, s, quant)
    with torch.no_grad():
        ref = mlp(tokens)
        out = mlp.down(torch.relu(tokens @ w_hat.t()))
    assert loss == pytest.approx(float((out - ref).pow(2).mean()), rel=1e-5)
    assert loss > 0


@pytest.mark.parametrize("search_samples,n_samples,expected", [(None, 128, None), (16, 128, 8), (32, 128, 4),
                                                              (128, 128, None), (200, 128, None), (5, 16, 3)])
def test_only_token_wise_mappings_get_a_stride(search_samples, n_samples, expected):
    variant = AWQVariant(name="a", method="awq", bits=4, group_size=32, search_samples=search_samples)
    handler = AWQHandler(nn.Module(), variant, {}, awq_arch.LLAMA_LIKE, "k", torch.float32, n_samples)
    by_prev = {m.prev: m for m in awq_arch.LLAMA_LIKE.mappings}
    assert handler._token_stride(by_prev["post_attention_layernorm"]) == expected
    assert handler._token_stride(by_prev["input_layernorm"]) is None  # attention: whole samples
