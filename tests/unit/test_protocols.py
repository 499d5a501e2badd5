"""The alternative perplexity protocols against references written independently here, the way the
original tools compute them (lm-eval's window generator, llama.cpp's chunk loop)."""

import math
import re

import pytest
import torch

from llmquant.eval import lmeval, llamacpp
from llmquant.eval.protocols import PROTOCOLS, adds_bos, get_protocol, score, tensors_sha256


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def logprobs(model, tokens: list[int]) -> torch.Tensor:
    """[len, vocab] float64 log-softmax of the full logits of one sequence."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([tokens])).logits[0].double(), -1)


# -- lm-eval-word ------------------------------------------------------------------------------

def lmeval_reference_windows(tokens, prefix, max_len):
    """lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window, restated."""
    first = min(max_len, len(tokens))
    windows = [([prefix] + tokens[:first - 1], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        windows.append((tokens[end - max_len - 1:end - 1], tokens[end - n:end]))
        done += n
    return [(inp[:len(inp) - (len(pred) - 1)], pred) for inp, pred in windows]


def lmeval_reference_nll(model, tokens, prefix, max_len):
    total = 0.0
    for context, cont in lmeval_reference_windows(tokens, prefix, max_len):
        inp = (context + cont)[-(max_len + 1):][:-1]  # what _loglikelihood_tokens feeds
        lp = logprobs(model, inp)[len(inp) - len(cont):]
        total -= float(lp.gather(1, torch.tensor(cont).unsqueeze(1)).sum())
    return total


def test_rolling_spans_match_lmeval_windows():
    for n, L in [(9, 3), (8, 3), (3, 5), (1, 1), (10, 1), (17, 4)]:
        toks = list(range(100, 100 + n))
        seq = [7] + toks
        ref = lmeval_reference_windows(toks, 7, L)
        spans = lmeval.rolling_spans(n, L)
        assert len(spans) == len(ref)
        for (a, s, e), (context, cont) in zip(spans, ref):
            assert seq[s + 1:e + 1] == cont
            assert seq[a:e] == (context + cont)[-(L + 1):][:-1]
            assert e - a <= L
    assert lmeval.rolling_spans(8, 3) == [(0, 0, 3), (3, 3, 6), (5, 6, 8)]


WIKI = (" = Alpha = \n \n Alpha is a @-@ test , with ( brackets ) . \n \n = = History = = \n \n"
        " It 's 1 @,@ 000 years old . \n = Beta = \n \n Beta \" quoted \" text . \n")


def test_wikitext_pages_detokenizer_and_words():
    pages = lmeval.wikitext_pages(WIKI)
    assert len(pages) == 2  # "= = History = =" is a section, not a page
    assert pages[0].startswith(" = Alpha = ") and "History" in pages[0]
    assert pages[1].startswith(" = Beta = ")
    assert "\n".join(pages) == WIKI  # nothing lost or added between pages
    d = lmeval.wikitext_detokenize(pages[0])
    assert "a-test, with (brackets)." in d and "It's 1,000 years old." in d and "== History ==" in d
    assert lmeval.wikitext_detokenize(' say " hi " now ') == ' say "hi" now '
    # words of the original page: re.split on whitespace runs, edge whitespace counted
    assert lmeval.count_words(pages[1]) == len(re.split(r"\s+", pages[1]))
    assert lmeval.count_words("a b  c") == 3 and lmeval.count_words(" a b ") == 4
    assert lmeval.wikitext_pages("no headings here\n\njust text") == ["no headings here\n\njust text"]


def test_word_perplexity_matches_reference(tiny):
    model, tok = tiny
    from tests.conftest import pydoc_text

    text = " = One = \n" + pydoc_text("test")[:1500] + "\n = Two = \n" + pydoc_text("test")[3000:3900]
    t = get_protocol("lm-eval-word").prepare(tok, text, torch.zeros(1, 1, dtype=torch.long))
    pages = lmeval.wikitext_pages(text)
    assert len(pages) == 2 and t["doc_words"].tolist() == [len(re.split(r"\s+", p)) for p in pages]
    prefix = int(t["prefix_id"][0])
    assert prefix == tok.bos_token_id
    L = 64
    got = score("lm-eval-word", model, t, seqlen=L)
    ref_nll, ref_words, ref_tokens = 0.0, 0, 0
    for p in pages:
        toks = tok(lmeval.wikitext_detokenize(p), add_special_tokens=False).input_ids
        ref_nll += lmeval_reference_nll(model, toks, prefix, L)
        ref_words += len(re.split(r"\s+", p))
        ref_tokens += len(toks)
    assert got.tokens_scored == ref_tokens and got.words == ref_words and got.documents == 2
    assert got.nll_sum == pytest.approx(ref_nll, rel=1e-5)
    assert got.ppl == pytest.approx(math.exp(ref_nll / ref_words), rel=1e-5)
    plan = get_protocol("lm-eval-word").plan(t, L, None)
    assert (plan.windows, plan.tokens_scored, plan.words) == (got.windows, got.tokens_scored, got.words)
    one = score("lm-eval-word", model, t, seqlen=L, max_windows=1)  # max_windows = first N documents
    assert one.documents == 1 and one.tokens_scored == int(t["doc_lengths"][0])


# -- llama-cpp ---------------------------------------------------------------------------------

def llamacpp_reference(model, tokens, n_ctx, bos):
    """llama.cpp's perplexity(): chunks of n_ctx, BOS over each chunk's first token, score the
    logits from n_ctx/2 on against the next token."""
    n_chunk = len(tokens) // n_ctx
    first = n_ctx // 2
    nll, count = 0.0, 0
    for i in range(n_chunk):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        lp = logprobs(model, chunk)
        for pos in range(first, n_ctx - 1):
            nll -= float(lp[pos, chunk[pos + 1]])
            count += 1
    return math.exp(nll / count), nll, count


@pytest.mark.parametrize("bos", [None, 0])
def test_llamacpp_matches_reference(tiny, bos):
    model, tok = tiny
    from tests.conftest import pydoc_text

    ids = tok(pydoc_text("test")[:6000], return_tensors="pt").input_ids
    n_ctx = 96
    t = {"input_ids": ids, "bos_id": torch.tensor([bos] if bos is not None else [], dtype=torch.long)}
    got = score("llama-cpp", model, t, seqlen=n_ctx, batch_size=3)
    ppl, nll, count = llamacpp_reference(model, ids[0].tolist(), n_ctx, bos)
    assert got.windows == ids.shape[1] // n_ctx and got.tokens_scored == count == got.windows * (n_ctx - 1 - 48)
    assert got.ppl == pytest.approx(ppl, rel=1e-5) and got.nll_sum == pytest.approx(nll, rel=1e-5)


def test_llamacpp_rules():
    assert llamacpp.scored_per_chunk(512) == 255 and llamacpp.scored_per_chunk(2048) == 1023
    assert llamacpp.scored_per_chunk(7) == 3  # first = 3: logits 3..5 predict tokens 4..6
    assert llamacpp.chunk_count(1100, 512, None) == 2 and llamacpp.chunk_count(5000, 512, 3) == 3
    with pytest.raises(ValueError, match="2 x 512"):
        llamacpp.chunk_count(1000, 512, None)  # llama.cpp refuses fewer than 2 * n_ctx tokens
    x = llamacpp.chunk_inputs(torch.arange(10).unsqueeze(0), 4, 2, bos_id=99)
    assert x.tolist() == [[99, 1, 2, 3], [99, 5, 6, 7]]


def test_adds_bos_and_defaults(tiny):
    from typing import get_args

    from llmquant.recipe import ProtocolName

    _, tok = tiny
    assert list(PROTOCOLS) == list(get_args(ProtocolName))  # the recipe offers exactly the table's protocols
    assert adds_bos(tok) == (tok("a").input_ids[0] == tok.bos_token_id)
    assert PROTOCOLS["llama-cpp"].default_seqlen == 512 and PROTOCOLS["gptq-paper"].default_seqlen == 2048
    with pytest.raises(ValueError, match="allowed: gptq-paper, lm-eval-word, llama-cpp"):
        get_protocol("wikitext")


def test_paper_protocol_through_table_is_unchanged(tiny):
    from llmquant.eval.evaluate import tokens_sha256
    from llmquant.eval.perplexity import perplexity

    model, tok = tiny
    ids = tok("hello world, " * 200, return_tensors="pt").input_ids
    assert score("gptq-paper", model, {"input_ids": ids}, 64, 3).ppl == perplexity(model, ids, 64, 3).ppl
    assert tensors_sha256({"input_ids": ids}) == tokens_sha256(ids)  # old protocol keys stay valid
    assert tensors_sha256({"input_ids": ids, "bos_id": torch.tensor([0])}) != tokens_sha256(ids)
