"""Fidelity to the baseline (eval/fidelity.py, eval/reference.py): the bucketed KL against an exact
KL computed here with torch, top-1 agreement and the p99 against hand-made references, the
reference file's round trip and checks, and the observers on a tiny random Llama."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmquant.errors import UserError
from llmquant.eval.fidelity import FidelityAccumulator, bucket_kl, reference_from_logits, top1_agrees
from llmquant.eval.reference import FidelityObserver, ReferenceWriter, read_reference, reference_name

V = 256


def full_kl(logits_p, logits_q):
    """Exact KL(softmax(p) || softmax(q)) per row, in float64, independent of the module's code."""
    lp = torch.log_softmax(logits_p.double(), -1)
    lq = torch.log_softmax(logits_q.double(), -1)
    return F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)


def random_logits(seed, positions=32, vocab=V, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(positions, vocab, generator=g) * scale


# -- (a) bucketed KL vs exact KL ---------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_bucket_kl_is_exact_when_rest_is_proportional(seed):
    """The variant moves only the reference's top-k logits; outside them its logits equal the
    baseline's, so q(. | rest) = p(. | rest) and the merged bucket loses nothing."""
    p = random_logits(seed)
    ref = reference_from_logits(p, k=16)
    g = torch.Generator().manual_seed(100 + seed)
    q = p.clone()
    q.scatter_add_(-1, ref.ids.long(), torch.randn(ref.ids.shape, generator=g))
    q += torch.randn(p.shape[0], 1, generator=g) * 5  # a per-row shift does not change softmax
    exact = full_kl(p, q)
    bucket = bucket_kl(ref, q).double()
    assert float(exact.min()) > 1e-3  # the variant does differ
    torch.testing.assert_close(bucket, exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 8, 64])
def test_bucket_kl_is_a_nonnegative_lower_bound(seed, k):
    p, q = random_logits(seed), random_logits(1000 + seed, scale=2.0)
    q = p + 0.7 * q  # a perturbed copy: some positions close, some far
    exact = full_kl(p, q)
    bucket = bucket_kl(reference_from_logits(p, k=k), q).double()
    assert (bucket >= 0).all()
    assert (bucket <= exact + 1e-5).all()
    if k < 64:  # the bound is not trivially tight: merging the rest loses something
        assert float((exact - bucket).max()) > 1e-4


def test_bucket_kl_with_k_covering_the_vocabulary_is_exact():
    p, q = random_logits(7, vocab=50), random_logits(8, vocab=50)
    ref = reference_from_logits(p, k=64)  # capped at the vocabulary
    assert ref.ids.shape == (32, 50) and torch.isneginf(ref.logp_rest).all()
    torch.testing.assert_close(bucket_kl(ref, q).double(), full_kl(p, q), rtol=1e-4, atol=1e-5)


def test_bucket_kl_of_identical_logits_is_zero():
    p = random_logits(3)
    assert float(bucket_kl(reference_from_logits(p), p).abs().max()) < 1e-5


def test_reference_rest_mass():
    p = random_logits(4)
    ref = reference_from_logits(p, k=10)
    probs = torch.softmax(p.double(), -1)
    top = probs.topk(10, -1).values.sum(-1)
    torch.testing.assert_close(ref.logp_rest.double().exp(), 1 - top, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ref.logp.double(), torch.log(probs.topk(10, -1).values), rtol=1e-4, atol=1e-5)


# -- (b) top-1 agreement -----------------------------------------------------------------------

def test_top1_against_hand_computed_argmax():
    base = torch.tensor([[0.1, 2.0, 0.3, 0.0, -1.0],   # argmax 1
                         [5.0, 0.0, 0.0, 0.0, 0.0],    # argmax 0
                         [0.0, 0.0, 0.0, 0.0, 3.0],    # argmax 4
                         [0.0, 1.0, 2.0, 3.0, 4.0]])   # argmax 4
    variant = torch.tensor([[0.0, 1.0, 0.9, 0.0, 0.0],  # 1: agrees
                            [0.0, 0.5, 0.0, 0.0, 0.0],  # 1: differs
                            [0.0, 0.0, 0.0, 0.0, 0.1],  # 4: agrees
                            [9.0, 0.0, 0.0, 0.0, 0.0]])  # 0: differs
    ref = reference_from_logits(base, k=3)
    assert ref.ids[:, 0].tolist() == [1, 0, 4, 4]
    assert top1_agrees(ref, variant).tolist() == [True, False, True, False]
    acc = FidelityAccumulator(top_k=3)
    acc.add(ref, variant)
    assert acc.result()["top1"] == 0.5


# -- (c) mean and p99 --------------------------------------------------------------------------

def test_mean_and_p99_against_torch_and_numpy():
    p, q = random_logits(11, positions=300, vocab=40), random_logits(12, positions=300, vocab=40)
    acc = FidelityAccumulator(top_k=64)
    for s in range(0, 300, 70):  # streamed in uneven chunks
        acc.add(reference_from_logits(p[s:s + 70]), q[s:s + 70])
    got = acc.result()
    exact = full_kl(p, q)  # k covers the vocabulary: the bucket KL is the exact KL
    assert got["positions"] == 300 and got["top_k"] == 64 and got["rest_mass_mean"] == 0.0
    assert got["kld_mean"] == pytest.approx(float(exact.mean()), rel=1e-4)
    assert got["kld_p99"] == pytest.approx(float(torch.quantile(exact, 0.99)), rel=1e-4)
    assert got["kld_p99"] == pytest.approx(float(np.percentile(exact.numpy(), 99)), rel=1e-4)
    assert got["top1"] == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).double().mean()))


def test_no_positions_is_an_error():
    with pytest.raises(ValueError, match="no positions"):
        FidelityAccumulator().result()


# -- (d) the reference file ------------------------------------------------------------------

SEQLEN = 9  # 8 scored positions a window


def write_reference(path, logits_by_window, chunk=3):
    w = ReferenceWriter(SEQLEN, top_k=5)
    for i, logits in enumerate(logits_by_window):
        for s in range(0, logits.shape[0], chunk):
            w(i, s, logits[s:s + chunk])
    w.save(path)


def test_reference_round_trip(tmp_path):
    windows = [random_logits(20 + i, positions=SEQLEN - 1, vocab=30) for i in range(3)]
    path = tmp_path / "ref.safetensors"
    write_reference(path, windows)
    want = reference_from_logits(torch.cat(windows), k=5)
    got = read_reference(path)
    assert torch.equal(got.ids, want.ids) and got.ids.dtype == torch.int32
    assert torch.equal(got.logp, want.logp) and torch.equal(got.logp_rest, want.logp_rest)
    part = read_reference(path, 8, 16)  # the second window
    assert torch.equal(part.ids, want.ids[8:16])


def test_reference_positions_must_come_in_order(tmp_path):
    w = ReferenceWriter(SEQLEN, top_k=5)
    w(0, 0, random_logits(1, positions=4, vocab=30))
    with pytest.raises(RuntimeError, match="out of order: got 8, expected 4"):
        w(1, 0, random_logits(2, positions=4, vocab=30))


def test_observer_rejects_a_missing_or_mismatched_reference(tmp_path):
    path = tmp_path / "ref.safetensors"
    with pytest.raises(UserError, match="reference is missing") as e:
        FidelityObserver(path, SEQLEN, 8)
    assert "\n" not in str(e.value)
    write_reference(path, [random_logits(i, positions=SEQLEN - 1, vocab=30) for i in range(2)])
    FidelityObserver(path, SEQLEN, 16)  # matches
    with pytest.raises(UserError, match="holds 16 positions of windows of 9 tokens, this evaluation scores 8 of 17"):
        FidelityObserver(path, 17, 8)  # another seqlen
    with pytest.raises(UserError, match="scores 24 of 9"):
        FidelityObserver(path, SEQLEN, 24)  # more windows than the baseline scored


def test_reference_name_keys_protocol_and_model():
    """A reference is found by (protocol key, model hash, k): another protocol or model looks for
    another file, and a missing file makes the baseline be evaluated again (run_steps.baseline_step)."""
    a = reference_name("p1", "a" * 64)
    assert a == f"fidelity-ref-p1-{'a' * 16}-k64.safetensors"
    assert len({a, reference_name("p2", "a" * 64), reference_name("p1", "b" * 64), reference_name("p1", "a" * 64, 32)}) == 4


def test_variant_observer_compares_with_the_file(tmp_path):
    windows = [random_logits(30 + i, positions=SEQLEN - 1, vocab=30) for i in range(2)]
    variants = [w + 0.5 * random_logits(40 + i, positions=SEQLEN - 1, vocab=30) for i, w in enumerate(windows)]
    path = tmp_path / "ref.safetensors"
    write_reference(path, windows)
    obs = FidelityObserver(path, SEQLEN, 16)
    for i, v in enumerate(variants):
        obs(i, 0, v[:5])
        obs(i, 5, v[5:])
    got = obs.result()
    want = bucket_kl(reference_from_logits(torch.cat(windows), k=5), torch.cat(variants))
    assert got["positions"] == 16 and got["top_k"] == 5
    assert got["kld_mean"] == pytest.approx(float(want.double().mean()), rel=1e-5)
    assert got["kld_mean"] <= float(full_kl(torch.cat(windows), torch.cat(variants)).mean()) + 1e-6


# -- (e) the observers on a tiny random model --------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=V, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def run_fidelity(tmp_path, base, variant, seqlen=33, windows=4, batch_size=2):
    from llmquant.eval.perplexity import perplexity

    ids = torch.randint(0, V, (1, seqlen * windows), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "ref.safetensors"
    writer = ReferenceWriter(seqlen)
    perplexity(base, ids, seqlen, batch_size=batch_size, observe=writer)
    writer.save(path)
    obs = FidelityObserver(path, seqlen, windows * (seqlen - 1))
    res = perplexity(variant, ids, seqlen, batch_size=batch_size, observe=obs)
    return obs.result(), res


def test_the_baseline_against_itself(tmp_path, tiny_llama):
    fid, _ = run_fidelity(tmp_path, tiny_llama, tiny_llama)
    assert fid["positions"] == 4 * 32 and fid["top_k"] == 64
    assert fid["kld_mean"] == pytest.approx(0.0, abs=1e-5) and fid["kld_p99"] == pytest.approx(0.0, abs=1e-5)
    assert fid["top1"] == 1.0
    assert 0.0 < fid["rest_mass_mean"] < 1.0  # a random model spreads its mass over 256 tokens


def test_a_perturbed_copy_diverges(tmp_path, tiny_llama):
    import copy

    other = copy.deepcopy(tiny_llama)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    fid, _ = run_fidelity(tmp_path, tiny_llama, other)
    assert fid["kld_mean"] > 1e-4 and fid["kld_p99"] >= fid["kld_mean"]
    assert fid["top1"] < 1.0
    # batch size does not move the measurement
    (tmp_path / "b1").mkdir()
    fid1, _ = run_fidelity(tmp_path / "b1", tiny_llama, other, batch_size=1)
    assert fid1["kld_mean"] == pytest.approx(fid["kld_mean"], rel=1e-4)


def test_only_fidelity_protocols_take_an_observer(tiny_llama):
    from llmquant.eval.protocols import PROTOCOLS, score

    assert [n for n, e in PROTOCOLS.items() if e.fidelity] == ["gptq-paper"]
    with pytest.raises(ValueError, match="does not measure fidelity"):
        score("lm-eval-word", tiny_llama, {}, 33, observe=lambda *a: None)


def test_kl_is_finite_when_the_variant_puts_no_mass_on_the_rest():
    p = random_logits(5, positions=4, vocab=20)
    ref = reference_from_logits(p, k=3)
    q = torch.full_like(p, -1e30)
    q.scatter_(-1, ref.ids.long(), 0.0)  # all of q's mass on the reference's tokens
    kl = bucket_kl(ref, q)
    assert torch.isfinite(kl).all() and (kl > 1.0).all() and not math.isnan(float(kl.sum()))


# -- the leaderboard ---------------------------------------------------------------------------

FIDELITY = {"kld_mean": 0.0123, "kld_p99": 0.2, "top1": 0.9375, "positions": 128, "top_k": 64,
            "rest_mass_mean": 0.1}


def eval_result(ppl, fidelity=None):
    from llmquant.eval.results import EvalResult, Protocol

    p = Protocol(name="gptq-paper", corpus="c", corpus_sha256="a", tokens_sha256="b", seqlen=33, windows=4,
                 tokens_scored=128, dtype="float32", device="cpu", latency="none")
    return EvalResult(ppl=ppl, nll_sum=1.0, protocol=p, size_bytes=1000, weights_bytes=1000, peak_rss_bytes=None,
                      isolated=False, latency=None, fidelity=fidelity)


def board_row(variant, ppl, fidelity=None, baseline=False):
    from llmquant.board import result_row

    return result_row(run="r", run_dir="/r", model="m", model_hash="h", variant=variant, method="rtn", bits=4,
                      group_size=32, fmt="gptq-v1", is_baseline=baseline, result=eval_result(ppl, fidelity),
                      baseline_ppl=10.0, artifact="a", artifact_hash="x")


def old_board(path):
    """A leaderboard made before the fidelity columns (schema up to the quantize step's columns)."""
    import sqlite3

    from llmquant.board import NAMES

    old = NAMES[:NAMES.index("kld_mean")]
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, " + ", ".join(old)
                + ", UNIQUE(run_dir, variant, protocol_key))")
    con.execute("INSERT INTO results (run, run_dir, model, variant, method, is_baseline, ppl, protocol_key) "
                "VALUES ('old', '/old', 'm', 'w4', 'rtn', 0, 11.0, 'p-old')")
    con.commit()
    con.close()


def test_an_old_board_gains_the_fidelity_columns(tmp_path):
    import sqlite3

    from llmquant.board import Board

    path = tmp_path / "old.sqlite"
    old_board(path)
    b = Board(path)
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(results)")}
    assert {"kld_mean", "kld_p99", "top1"} <= cols
    old = b.rows(run="old")
    assert len(old) == 1 and old[0].ppl == 11.0 and old[0].kld_mean is None and old[0].top1 is None
    b.record([board_row("baseline", 10.0, baseline=True), board_row("w4", 10.5, FIDELITY)])
    new = {r.variant: r for r in Board(path).rows(run="r")}  # reopened: no second migration
    assert new["w4"].kld_mean == 0.0123 and new["w4"].kld_p99 == 0.2 and new["w4"].top1 == 0.9375
    assert new["baseline"].kld_mean is None


def test_board_formats_show_the_fidelity_columns(tmp_path):
    import csv
    import io
    import json

    from typer.testing import CliRunner

    from llmquant.board import Board
    from llmquant.cli import app

    path = tmp_path / "b.sqlite"
    Board(path).record([board_row("baseline", 10.0, baseline=True), board_row("w4", 10.5, FIDELITY)])

    def board(*args):
        res = CliRunner().invoke(app, ["board", "--board", str(path), *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    md = board("--format", "md")
    assert "| KLD | KLD p99 | top-1 % |" in md
    assert "| 0.0123 | 0.2000 | 93.75 |" in md and "| - | - | - |" in md  # the baseline: not measured
    csv_rows = {r["variant"]: r for r in csv.DictReader(io.StringIO(board("--format", "csv")))}
    w4 = csv_rows["w4"]
    assert (w4["kld_mean"], w4["kld_p99"], w4["top1"]) == ("0.0123", "0.2", "0.9375")
    js = {r["variant"]: r for r in json.loads(board("--format", "json"))}
    assert js["w4"]["kld_mean"] == 0.0123 and js["w4"]["top1"] == 0.9375 and js["baseline"]["kld_p99"] is None
    table = board("--format", "table")
    assert "KLD" in table and "93.75" in table


def test_tables_without_fidelity_hide_its_columns(tmp_path):
    from llmquant.board import Board, render_markdown

    path = tmp_path / "b.sqlite"
    Board(path).record([board_row("baseline", 10.0, baseline=True), board_row("w4", 10.5)])
    md = render_markdown(Board(path).rows())
    assert "KLD" not in md and "top-1" not in md and "| w4 |" in md
