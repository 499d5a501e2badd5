import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmquant.formats.bitpack import pack_cols, pack_rows, unpack_cols, unpack_rows


def reference_pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit by bit: value k of a column occupies stream bits [bits*k, bits*k+bits), word w holds bits [32w, 32w+32)."""
    k, n = values.shape
    words = k * bits // 32
    out = torch.zeros(words, n, dtype=torch.int64)
    for col in range(n):
        for row in range(k):
            v = int(values[row, col])
            for b in range(bits):
                if v >> b & 1:
                    pos = row * bits + b
                    out[pos // 32, col] |= 1 << (pos % 32)
    out = torch.where(out >= 2**31, out - 2**32, out)
    return out.to(torch.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_matches_bitwise_reference(bits):
    g = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2**bits, (64, 5), generator=g)
    assert torch.equal(pack_rows(v, bits), reference_pack(v, bits))


def test_known_4bit_word():
    v = torch.arange(1, 9).reshape(8, 1)  # values 1..8 in one word: 0x87654321
    assert pack_rows(v, 4).item() == 0x87654321 - 2**32


def test_3bit_values_straddle_words():
    v = torch.zeros(32, 1, dtype=torch.int64)
    v[10, 0] = 0b111  # bits 30..32: two bits in word 0, one in word 1
    p = pack_rows(v, 3)
    assert p.shape == (3, 1)
    assert (p[0, 0].item() & 0xFFFFFFFF) == 0b11 << 30
    assert p[1, 0].item() == 1


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), runs=st.integers(1, 4), n=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_round_trip_rows_and_cols(bits, runs, n, seed):
    per = {2: 16, 3: 32, 4: 8, 8: 4}[bits]
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 2**bits, (per * runs, n), generator=g, dtype=torch.int32)
    assert torch.equal(unpack_rows(pack_rows(v, bits), bits), v)
    assert torch.equal(unpack_cols(pack_cols(v.t().contiguous(), bits), bits), v.t())


def test_rejects_bad_shapes_and_values():
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_rows(torch.zeros(12, 2, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="out of range"):
        pack_rows(torch.full((8, 1), 16), 4)
