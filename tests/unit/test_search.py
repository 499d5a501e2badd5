"""The quality search's choice of attempts (search.py), on measured curves with a known answer."""

import math

import pytest

from llmquant.search import FIRST_BITS, Attempt, bracket, chosen, next_bits


def run_search(measure, bound, lo=2.2, hi=8.6, predict=None, attempts=6, tolerance=0.1):
    tried: list[Attempt] = []
    while len(tried) < attempts:
        b = next_bits(tried, bound, lo, hi, predict=predict, tolerance=tolerance)
        if b is None:
            break
        assert lo <= b <= hi
        assert b not in [a.bits for a in tried], "an attempt is never repeated"
        tried.append(Attempt(b, measure(b)))
    return tried


def curve(b: float) -> float:
    """A perplexity increase in % falling as 4^-b (error energy of b-bit rounding)."""
    return 400.0 * 4.0 ** (-(b - 2.0))


def smallest_within(bound: float) -> float:
    return 2.0 + math.log(400.0 / bound, 4.0)  # curve(b) == bound


def test_first_attempt_is_the_default_start():
    assert next_bits([], 2.0, 2.2, 8.6) == FIRST_BITS


def test_with_an_exact_predictor_the_search_lands_just_above_the_answer_in_two_attempts():
    bound = 2.0
    tried = run_search(curve, bound, predict=lambda b: 4.0 ** (-b))
    keep, met = chosen(tried, bound)
    assert met
    answer = smallest_within(bound)
    assert answer <= keep.bits <= answer + 0.2  # the margin asks for 10 % under the bound
    assert len(tried) <= 3


def test_with_a_wrong_predictor_it_still_keeps_a_size_that_meets_the_bound():
    bound = 2.0
    tried = run_search(curve, bound, predict=lambda b: 1.0 / b, attempts=12)  # far too flat
    keep, met = chosen(tried, bound)
    low, high = bracket(tried, bound, 2.2, 8.6)
    assert met and keep.bits == high
    assert low < smallest_within(bound) <= high < smallest_within(bound) + 0.5


def test_without_a_predictor_it_bisects():
    bound = 10.0
    tried = run_search(curve, bound, attempts=10)
    low, high = bracket(tried, bound, 2.2, 8.6)
    assert low < smallest_within(bound) <= high
    assert high - low <= 0.1


def test_an_unreachable_bound_ends_at_the_largest_size_and_says_it_missed():
    tried = run_search(lambda b: 50.0, 2.0, attempts=10)
    keep, met = chosen(tried, 2.0)
    assert not met
    assert keep.bits == 8.6 == max(a.bits for a in tried)
    assert next_bits(tried, 2.0, 2.2, 8.6) is None


def test_a_bound_met_at_the_smallest_size_stops_there():
    tried = run_search(lambda b: 0.0, 2.0, predict=lambda b: 4.0 ** (-b))
    keep, met = chosen(tried, 2.0)
    assert met and keep.bits <= 2.2 + 0.1


def test_chosen_keeps_the_smallest_that_meets():
    tried = [Attempt(4.5, 3.0), Attempt(6.0, 1.0), Attempt(5.2, 1.9)]
    assert chosen(tried, 2.0) == (Attempt(5.2, 1.9), True)
