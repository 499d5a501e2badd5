"""Sampling and text streaming of the built-in server (pure parts)."""

import torch

from llmquant.serve.textgen import TextStream, make_generator, sample_token


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample_token(logits, 0.0, 1.0, None) == 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    # probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps {0, 1} (0.5 < 0.7, 0.5 + 0.3 >= 0.7)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    g = make_generator(0)
    draws = [sample_token(logits, 1.0, 0.7, g) for _ in range(2000)]
    assert set(draws) == {0, 1}
    share0 = draws.count(0) / len(draws)
    assert abs(share0 - 0.5 / 0.8) < 0.04  # renormalised: 0.625
    # a tiny top_p keeps only the most likely token
    assert {sample_token(logits, 1.0, 0.01, g) for _ in range(200)} == {0}


def test_temperature_sampling_follows_the_distribution_and_the_seed():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    a = [sample_token(logits, 1.0, 1.0, make_generator(7)) for _ in range(3)]
    b = [sample_token(logits, 1.0, 1.0, make_generator(7)) for _ in range(3)]
    assert a == b
    g = make_generator(1)
    draws = [sample_token(logits, 1.0, 1.0, g) for _ in range(3000)]
    assert abs(draws.count(2) / 3000 - 0.2) < 0.03
    # a low temperature sharpens towards the argmax: p0 ~ 0.5^10 / (0.5^10 + 0.3^10 + 0.2^10) = 0.994
    cold = [sample_token(logits, 0.1, 1.0, g) for _ in range(500)]
    assert cold.count(0) / 500 > 0.97


class CharTokenizer:
    """Token ids are code points; 0x100+ stands for a raw byte of a UTF-8 sequence."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        raw = b"".join(bytes([i - 0x100]) if i >= 0x100 else chr(i).encode() for i in ids)
        return raw.decode("utf-8", errors="replace")


def push_all(stream, text_or_ids):
    ids = [ord(c) for c in text_or_ids] if isinstance(text_or_ids, str) else text_or_ids
    out = []
    for i in ids:
        out.append(stream.push(i))
        if stream.stopped:
            break
    return out


def test_stream_releases_text_and_stops_before_the_stop_string():
    s = TextStream(CharTokenizer(), stop=("END",))
    deltas = push_all(s, "hello ENDING")
    assert "".join(deltas) == "hello "
    assert s.stopped
    # "E" and "EN" were held back (they could start "END"), never sent
    assert deltas[-3:] == ["", "", ""]


def test_stream_releases_a_held_back_prefix_when_it_does_not_complete():
    s = TextStream(CharTokenizer(), stop=("END",))
    deltas = push_all(s, "ENTER")
    assert deltas == ["", "", "ENT", "", "ER"]  # the second "E" could again start "END"
    assert not s.stopped and s.flush() == ""


def test_stream_never_sends_half_a_utf8_character():
    s = TextStream(CharTokenizer())
    e_acute = [0x100 + b for b in "é".encode()]  # two bytes
    deltas = push_all(s, [ord("a"), *e_acute, ord("b")])
    assert deltas == ["a", "", "é", "b"]


def test_flush_returns_the_rest():
    s = TextStream(CharTokenizer(), stop=("xyz",))
    assert "".join(push_all(s, "abx")) == "ab"
    assert s.flush() == "x"
