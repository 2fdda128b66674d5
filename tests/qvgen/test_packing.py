from __future__ import annotations

import pytest
import torch

from qvgen.packing import pack_codes, packed_columns, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_pack_unpack_round_trip(bits: int, k: int) -> None:
    codes = torch.randint(0, 2**bits, (5, k), generator=torch.Generator().manual_seed(k))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, packed_columns(k, bits))
    assert torch.equal(unpack_codes(packed, k, bits), codes.int())


def test_nibble_order_low_is_even_k_and_odd_k_pads_high_nibble() -> None:
    packed = pack_codes(torch.tensor([[1, 2, 3]]), 4)
    assert packed.tolist() == [[1 | (2 << 4), 3]]


def test_codes_out_of_range_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        pack_codes(torch.tensor([[8]]), 3)


def test_unpack_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="3 columns, expected 4 for K=8"):
        unpack_codes(torch.zeros(2, 3, dtype=torch.uint8), 8, 4)
