import pytest

from llmquant.recipe import SelectSpec
from llmquant.winner import Candidate, pick_winner

BASE = Candidate("baseline", 400, 10.0, ttft_ms=25, decode_tok_s=45)
C = [
    Candidate("w8", 170, 10.1, ttft_ms=30, decode_tok_s=40),
    Candidate("w4", 110, 10.15, ttft_ms=20, decode_tok_s=50),
    Candidate("w3", 90, 13.0, ttft_ms=15, decode_tok_s=60),
]


def test_smallest_within():
    d = pick_winner(BASE, C, SelectSpec(policy="smallest_within", max_ppl_increase_pct=2.0))
    assert d.winner == "w4" and "smallest" in d.reason and "+1.50 %" in d.reason and d.warnings == ()


def test_fastest_within_and_best_ppl():
    assert pick_winner(BASE, C, SelectSpec(policy="fastest_within", max_ppl_increase_pct=50)).winner == "w3"
    assert pick_winner(BASE, C, SelectSpec(policy="best_ppl")).winner == "w8"


def test_nothing_qualifies_says_what_to_do():
    d = pick_winner(BASE, C, SelectSpec(max_ppl_increase_pct=0.5))
    assert d.winner is None and "closest: w8" in d.reason and "GPTQ" in d.reason


def test_fastest_needs_latency():
    d = pick_winner(Candidate("baseline", 9, 10.0), [Candidate("a", 1, 10.0)], SelectSpec(policy="fastest_within"))
    assert d.winner is None and "latency" in d.reason


def test_a_slower_winner_is_warned_about():
    d = pick_winner(BASE, C, SelectSpec(policy="best_ppl"))  # w8: 30 vs 25 ms, 40 vs 45 tok/s
    assert d.winner == "w8" and len(d.warnings) == 3
    assert "1.20x slower" in d.warnings[0] and "0.89x the baseline" in d.warnings[1]
    assert "min_decode_ratio" in d.warnings[2]


def test_speed_guards_exclude_slower_variants():
    slow_small = Candidate("w4slow", 100, 10.1, ttft_ms=60, decode_tok_s=6)  # the AVX2 W8 story
    d = pick_winner(BASE, C + [slow_small], SelectSpec(max_ppl_increase_pct=2.0))
    assert d.winner == "w4slow" and any("0.13x" in w for w in d.warnings)  # unguarded: smallest wins, warned
    d = pick_winner(BASE, C + [slow_small], SelectSpec(max_ppl_increase_pct=2.0, min_decode_ratio=1.0))
    assert d.winner == "w4" and "w4slow: decode 0.13x baseline < select.min_decode_ratio 1" in d.reason
    d = pick_winner(BASE, C, SelectSpec(policy="best_ppl", max_ttft_ratio=1.0))
    assert d.winner == "w4" and "w8: first token 1.20x baseline > select.max_ttft_ratio 1" in d.reason
    d = pick_winner(BASE, C, SelectSpec(min_decode_ratio=2.0))
    assert d.winner is None and "no variant passes the speed guards" in d.reason


def test_guard_without_measurement_excludes():
    d = pick_winner(BASE, [Candidate("a", 1, 10.0)], SelectSpec(max_ttft_ratio=1.0))
    assert d.winner is None and "no first-token latency" in d.reason


@pytest.mark.parametrize("bad,msg", [("min_decode_ratio: 0", "greater than 0"),
                                     ("max_ttft_ratio: fast", "max_ttft_ratio")])
def test_guard_values_are_validated(bad, msg):
    from pydantic import ValidationError

    import yaml

    with pytest.raises(ValidationError, match=msg):
        SelectSpec(**yaml.safe_load(bad))


def test_same_speed_is_not_a_slowdown_and_guarded_metrics_get_no_hint():
    even = Candidate("w8", 170, 10.1, ttft_ms=25.2, decode_tok_s=44.7)  # within 1 %: measurement noise
    assert pick_winner(BASE, [even], SelectSpec()).warnings == ()
    slow = Candidate("w8", 170, 10.1, ttft_ms=27, decode_tok_s=40)
    d = pick_winner(BASE, [slow], SelectSpec(max_ttft_ratio=1.1))  # TTFT guarded and within it
    assert d.winner == "w8" and len(d.warnings) == 3 and d.warnings[-1].startswith("set select.min_decode_ratio to")


FID = [
    Candidate("w8", 170, 10.1, kld=0.002, top1=0.99),
    Candidate("w4", 110, 10.15, kld=0.03, top1=0.93),
    Candidate("w3", 90, 10.18, kld=0.2, top1=0.8),
]


def test_fidelity_bounds_filter_candidates():
    assert pick_winner(BASE, FID, SelectSpec(max_ppl_increase_pct=2.0)).winner == "w3"  # unbounded: smallest
    d = pick_winner(BASE, FID, SelectSpec(max_ppl_increase_pct=2.0, max_kld=0.05))
    assert d.winner == "w4" and "excluded by speed and fidelity guards" in d.reason
    assert "w3: KLD 0.2 > select.max_kld 0.05" in d.reason
    d = pick_winner(BASE, FID, SelectSpec(max_ppl_increase_pct=2.0, min_top1=0.95))
    assert d.winner == "w8" and "w4: top-1 agreement 0.9300 < select.min_top1 0.95" in d.reason
    d = pick_winner(BASE, FID, SelectSpec(max_ppl_increase_pct=2.0, max_kld=0.05, min_top1=0.95))
    assert d.winner == "w8"
    d = pick_winner(BASE, FID, SelectSpec(max_kld=0.001))
    assert d.winner is None and "no variant passes the speed and fidelity guards" in d.reason


def test_fidelity_bound_without_measurement_excludes():
    d = pick_winner(BASE, [Candidate("a", 1, 10.0)], SelectSpec(max_kld=1.0))
    assert d.winner is None and "a: no KL divergence measured for select.max_kld" in d.reason
    d = pick_winner(BASE, [Candidate("a", 1, 10.0)], SelectSpec(min_top1=0.5))
    assert d.winner is None and "a: no top-1 agreement measured for select.min_top1" in d.reason


@pytest.mark.parametrize("bad,msg", [("max_kld: -0.1", "greater than or equal to 0"),
                                     ("min_top1: 1.5", "less than or equal to 1"),
                                     ("max_kld: tiny", "max_kld")])
def test_fidelity_bound_values_are_validated(bad, msg):
    from pydantic import ValidationError

    import yaml

    with pytest.raises(ValidationError, match=msg):
        SelectSpec(**yaml.safe_load(bad))
