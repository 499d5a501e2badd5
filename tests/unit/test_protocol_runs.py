"""Protocols chosen in the recipe and on the command line: tagged results, never ranked together."""

import re

import pytest
import torch
from typer.testing import CliRunner

from llmquant.board import Board, group_by_protocol, render_markdown
from llmquant.cli import app
from llmquant.errors import UserError
from llmquant.recipe import parse_recipe

runner = CliRunner()
WIKI_DOC = " = {t} = \n \n {t} is a small @-@ page , written ( for tests ) . {body} \n \n = = Notes = = \n \n {body} \n"


def wiki_corpus(path, n_docs=3):
    from tests.conftest import pydoc_text

    text = pydoc_text("test")
    docs = [WIKI_DOC.format(t=f"Topic {i}", body=text[i * 900:(i + 1) * 900]) for i in range(n_docs)]
    path.write_text("".join(docs))
    return path


def recipe_text(model_dir, tmp, protocol, dataset, seqlen, max_windows=None):
    mw = f"\n  max_windows: {max_windows}" if max_windows else ""
    return f"""
name: tiny-{protocol}
model: {{source: {model_dir}, dtype: float32, device: cpu}}
eval:
  dataset: {{source: "{dataset}", split: test}}
  protocol: {protocol}
  seqlen: {seqlen}{mw}
  isolate: false
  latency: {{enabled: false}}
variants:
  - {{name: w8, method: rtn, bits: 8, group_size: 32}}
output: {{dir: {tmp / ('run-' + protocol)}, board: {tmp / 'board.sqlite'}}}
"""


def test_recipe_protocol_field():
    base = {"model": {"source": "m"}}
    r = parse_recipe({**base, "eval": {"dataset": "x"}})
    assert r.eval.protocol == "gptq-paper" and r.eval.seqlen == 2048
    r = parse_recipe({**base, "eval": {"dataset": "x", "protocol": "llama-cpp"}})
    assert r.eval.seqlen == 512  # llama-perplexity's default context
    r = parse_recipe({**base, "eval": {"dataset": "x", "protocol": "llama-cpp", "seqlen": 256}})
    assert r.eval.seqlen == 256
    with pytest.raises(UserError, match=r"eval\.protocol: got 'wikitext'; input should be 'gptq-paper', "
                                        r"'lm-eval-word' or 'llama-cpp'"):
        parse_recipe({**base, "eval": {"dataset": "x", "protocol": "wikitext"}})


@pytest.fixture(scope="module")
def two_protocol_runs(tmp_path_factory, tiny_model_dir):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("protocols")
    corpus = wiki_corpus(tmp / "wiki.txt")
    out = {}
    for protocol, dataset, seqlen, mw in [("llama-cpp", "builtin:pydoc", 64, 4), ("lm-eval-word", corpus, 96, None)]:
        path = tmp / f"{protocol}.yaml"
        path.write_text(recipe_text(tiny_model_dir, tmp, protocol, dataset, seqlen, mw))
        out[protocol] = run(load_recipe(path))
    return tmp, corpus, out


def direct_score(model_dir, tensors_path, protocol, seqlen, max_windows):
    """The same protocol computed here in-process on the run's own token file."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llmquant.eval.protocols import score

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return score(protocol, model, load_file(tensors_path), seqlen, max_windows)


def test_runs_are_tagged_with_their_protocol(two_protocol_runs, tiny_model_dir):
    from llmquant.eval import lmeval

    tmp, corpus, runs = two_protocol_runs
    lc = runs["llama-cpp"].baseline
    assert lc.protocol.name == "llama-cpp" and lc.protocol.windows == 4
    assert lc.protocol.tokens_scored == 4 * (64 - 1 - 32)
    want = direct_score(tiny_model_dir, tmp / "run-llama-cpp" / "cache" / "eval-tokens.safetensors", "llama-cpp", 64, 4)
    assert lc.ppl == pytest.approx(want.ppl, rel=1e-5)
    lw = runs["lm-eval-word"].baseline
    pages = lmeval.wikitext_pages(corpus.read_text())
    assert lw.protocol.name == "lm-eval-word" and lw.protocol.documents == len(pages) == 3
    assert lw.protocol.words == sum(len(re.split(r"\s+", p)) for p in pages)
    want = direct_score(tiny_model_dir, tmp / "run-lm-eval-word" / "cache" / "eval-tokens.safetensors",
                        "lm-eval-word", 96, None)
    assert lw.ppl == pytest.approx(want.ppl, rel=1e-5)
    assert "word perplexity over" in lw.protocol.describe() and "second half scored" in lc.protocol.describe()


def test_board_never_ranks_across_protocols(two_protocol_runs):
    tmp, _, _ = two_protocol_runs
    rows = Board(tmp / "board.sqlite").rows()
    groups = group_by_protocol(rows)
    assert len({model for model, _ in groups}) == 1 and len(groups) == 2  # one model, one table per protocol
    names = sorted({r["protocol"].split(":")[0] for g in groups.values() for r in g})
    assert names == ["llama-cpp", "lm-eval-word"]
    for g in groups.values():
        assert len({r["protocol_key"] for r in g}) == 1 and sum(r["is_baseline"] for r in g) == 1
    md = render_markdown(rows)
    assert "· protocol llama-cpp" in md and "· protocol lm-eval-word" in md
    assert "never ranked together" in md


def test_same_model_two_protocols_two_tables(tmp_path):
    def row(variant, protocol, ppl, base=False):
        return {"run": "r", "run_dir": "/r", "model": "m", "model_hash": "h", "variant": variant, "method": "rtn",
                "is_baseline": int(base), "ppl": ppl, "protocol_key": protocol + "-key",
                "protocol": f"{protocol}: corpus, ...", "size_bytes": 10}

    b = Board(tmp_path / "b.sqlite")
    b.record([row("baseline", "gptq-paper", 10.0, True), row("w4", "gptq-paper", 11.0),
              row("baseline", "lm-eval-word", 30.0, True), row("w4", "lm-eval-word", 33.0)])
    groups = group_by_protocol(b.rows())
    assert [[r["ppl"] for r in g] for g in groups.values()] == [[10.0, 11.0], [30.0, 33.0]]
    md = render_markdown(b.rows())
    assert md.index("## m · protocol gptq-paper") < md.index("| w4 |") < md.index("## m · protocol lm-eval-word")


def test_eval_command_protocols(tmp_path, tiny_model_dir):
    corpus = wiki_corpus(tmp_path / "wiki.txt", n_docs=2)
    board = tmp_path / "b.sqlite"
    res = runner.invoke(app, ["eval", str(tiny_model_dir), "--dataset", str(corpus), "--protocol", "lm-eval-word",
                              "--seqlen", "64", "--no-latency", "--no-isolate", "--board", str(board),
                              "--model", "tiny"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "word perplexity" in res.output and "lm-eval-word: wiki.txt, 2 documents" in res.output
    short = tmp_path / "short.txt"
    short.write_text("only a few hundred tokens here. " * 20)
    res = runner.invoke(app, ["eval", str(tiny_model_dir), "--dataset", str(short), "--protocol", "llama-cpp",
                              "--no-latency", "--no-isolate", "--board", str(board), "--model", "tiny"])
    assert res.exit_code == 2 and "2 x 512" in res.output  # too short for llama.cpp's default context
    res = runner.invoke(app, ["eval", str(tiny_model_dir), "--protocol", "wikitext"])
    assert res.exit_code == 2 and "--protocol: 'wikitext' is not allowed" in res.output
    assert len(Board(board).rows()) == 1


def test_llamacpp_too_short_corpus_is_one_line(tmp_path, tiny_model_dir):
    from llmquant.pipeline import run

    short = tmp_path / "short.txt"
    short.write_text("a few hundred characters of text. " * 10)
    r = parse_recipe({"model": {"source": str(tiny_model_dir), "device": "cpu"},
                      "eval": {"dataset": str(short), "protocol": "llama-cpp", "seqlen": 256, "isolate": False},
                      "output": {"dir": str(tmp_path / "run"), "board": str(tmp_path / "b.sqlite")}})
    with pytest.raises(UserError, match=r"fewer than the 2 x 256 llama.cpp's perplexity needs"):
        run(r)
    assert Board(tmp_path / "b.sqlite").rows() == []


def test_paper_protocol_key_is_unchanged_by_the_new_fields():
    from dataclasses import asdict

    from llmquant.eval.results import Protocol
    from llmquant.runs import content_hash

    p = Protocol(name="gptq-paper", corpus="c", corpus_sha256="a", tokens_sha256="b", seqlen=512, windows=64,
                 tokens_scored=64 * 511, dtype="float32", device="cpu", latency="none")
    old_fields = {k: v for k, v in asdict(p).items() if k not in ("corpus", "documents", "words")}
    assert p.key == content_hash(old_fields)  # results and baselines stored before keep matching
    w = Protocol(**{**asdict(p), "name": "lm-eval-word", "documents": 3, "words": 900})
    assert w.key != p.key and Protocol(**{**asdict(w), "words": 901}).key != w.key
