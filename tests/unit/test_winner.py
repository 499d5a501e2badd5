from llmquant.recipe import SelectSpec
from llmquant.winner import Candidate, pick_winner

C = [
    Candidate("w8", 170, 10.1, ttft_ms=30, decode_tok_s=40),
    Candidate("w4", 110, 10.15, ttft_ms=20, decode_tok_s=50),
    Candidate("w3", 90, 13.0, ttft_ms=15, decode_tok_s=60),
]


def test_smallest_within():
    d = pick_winner(10.0, C, SelectSpec(policy="smallest_within", max_ppl_increase_pct=2.0))
    assert d.winner == "w4" and "smallest" in d.reason and "+1.50 %" in d.reason


def test_fastest_within_and_best_ppl():
    assert pick_winner(10.0, C, SelectSpec(policy="fastest_within", max_ppl_increase_pct=50)).winner == "w3"
    assert pick_winner(10.0, C, SelectSpec(policy="best_ppl")).winner == "w8"


def test_nothing_qualifies_says_what_to_do():
    d = pick_winner(10.0, C, SelectSpec(max_ppl_increase_pct=0.5))
    assert d.winner is None and "closest: w8" in d.reason and "GPTQ" in d.reason


def test_fastest_needs_latency():
    d = pick_winner(10.0, [Candidate("a", 1, 10.0)], SelectSpec(policy="fastest_within"))
    assert d.winner is None and "latency" in d.reason
