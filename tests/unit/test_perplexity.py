import math

import pytest
import torch

from llmquant.eval.latency import percentile, prompts_from_stream
from llmquant.eval.perplexity import chunked_nll, perplexity, window_count


def reference_ppl(model, ids, seqlen, n):
    """Full logits, log_softmax, one window at a time, float64 accumulation."""
    nll, count = 0.0, 0
    for w in range(n):
        x = ids[:, w * seqlen:(w + 1) * seqlen]
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        nll -= float(logp.gather(1, x[0, 1:].unsqueeze(1)).sum())
        count += seqlen - 1
    return math.exp(nll / count), count


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import pydoc_text

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(pydoc_text("test")[:40000], return_tensors="pt").input_ids
    return model, ids


def test_matches_reference(tiny):
    model, ids = tiny
    got = perplexity(model, ids, seqlen=128, max_windows=6, batch_size=4)
    want, count = reference_ppl(model, ids, 128, 6)
    assert got.windows == 6 and got.tokens_scored == count == 6 * 127
    assert got.ppl == pytest.approx(want, rel=1e-5)
    assert 1.5 < got.ppl < 200  # the trained tiny model predicts something


def test_batch_size_does_not_change_result(tiny):
    model, ids = tiny
    a = perplexity(model, ids, 64, max_windows=5, batch_size=1).ppl
    b = perplexity(model, ids, 64, max_windows=5, batch_size=3).ppl
    assert a == pytest.approx(b, rel=1e-5)


def test_chunked_equals_whole():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h, t = torch.randn(2, 37, 16), torch.randint(0, 50, (2, 37))
    with torch.no_grad():
        whole = float(torch.nn.functional.cross_entropy(head(h).reshape(-1, 50), t.reshape(-1), reduction="sum"))
        assert chunked_nll(h, t, head, chunk=5) == pytest.approx(whole, rel=1e-6)


def test_window_count():
    assert window_count(1000, 128, None) == 7
    assert window_count(1000, 128, 3) == 3
    assert window_count(100, 128, None) == 0


def test_percentile_and_prompts():
    import numpy as np

    vals = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    assert percentile(vals, 90) == pytest.approx(float(np.percentile(vals, 90)))
    assert percentile([4.0], 90) == 4.0
    ps = prompts_from_stream(torch.arange(100).unsqueeze(0), 3, 10)
    assert [int(p[0, 0]) for p in ps] == [0, 45, 90] and all(p.shape == (1, 10) for p in ps)
