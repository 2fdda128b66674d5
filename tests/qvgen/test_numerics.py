from __future__ import annotations

import pytest
import torch

from qvgen.numerics import check_bits, qmax, quantize_tokens, round_half_up, weight_codes


@pytest.mark.parametrize("bits", [1, 9, 0, -4, 4.0, True])
def test_bits_outside_range_rejected(bits: object) -> None:
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        check_bits(bits, "weight_bits")  # type: ignore[arg-type]


def test_round_half_up_breaks_ties_upwards() -> None:
    v = torch.tensor([-1.5, -0.5, 0.5, 1.5, 2.5, 2.4999])
    assert round_half_up(v).tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0, 2.0]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_token_codes_stay_in_range_and_zero_is_exact(bits: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 33, generator=g) * 3
    x[:, 5] = 0.0
    tq = quantize_tokens(x, torch.tensor(0.9), torch.tensor(0.8), bits)
    assert tq.codes.min() >= -qmax(bits) and tq.codes.max() <= qmax(bits)
    q = tq.codes + tq.zero_point
    assert q.min() >= 0 and q.max() <= qmax(bits)
    assert torch.equal(tq.codes, torch.round(tq.codes))
    assert (tq.codes[:, 5] == 0).all()  # zero maps to code z_x, i.e. centred code 0


def test_all_zero_token_does_not_divide_by_zero() -> None:
    tq = quantize_tokens(torch.zeros(2, 8), torch.tensor(1.0), torch.tensor(1.0), 4)
    assert torch.isfinite(tq.scale).all() and (tq.codes == 0).all()


def test_weight_codes_clamp_to_range() -> None:
    w = torch.tensor([[-10.0, 0.0, 10.0]])
    codes = weight_codes(w, torch.tensor([[1.0]]), torch.tensor([[7.5]]), 4)
    assert codes.tolist() == [[0.0, 8.0, 15.0]]
