from __future__ import annotations

import math

import pytest
import torch

from qvgen.numerics import dequantize_weight, qmax, weight_codes
from training.quant.activation_clip import LearnedClipActivationQuantizer
from training.quant.activation_minmax import MinMaxActivationQuantizer
from training.quant.weight_lsq import LSQPlusWeightQuantizer
from training.quant.weight_minmax import MinMaxWeightQuantizer, minmax_scale_zero


def _weight(seed: int = 0, n: int = 24, k: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[:, 0] *= 8  # an outlier column: where clipping pays
    return w


def _lp_error(w: torch.Tensor, w_hat: torch.Tensor, p: float = 2.4) -> torch.Tensor:
    return (w_hat - w).abs().pow(p).sum(dim=1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_mse_search_beats_full_range_per_channel_and_rtn_overall(bits: int) -> None:
    w = _weight()
    lsq = LSQPlusWeightQuantizer(w, bits)
    rtn = MinMaxWeightQuantizer(w, bits)
    scale, zero = minmax_scale_zero(w, bits)  # the search's candidate p = 1
    full_range = dequantize_weight(weight_codes(w, scale, zero, bits), scale, zero)
    with torch.no_grad():
        err_lsq, err_rtn = _lp_error(w, lsq(w)), _lp_error(w, rtn(w))
    assert (err_lsq <= _lp_error(w, full_range)).all()
    assert err_lsq.sum() < err_rtn.sum()


def test_lsq_gradients_reach_scale_and_zero_with_lsq_scaling() -> None:
    w = _weight(k=16)
    quantizer = LSQPlusWeightQuantizer(w, 4)
    assert quantizer.grad_factor == pytest.approx(1 / math.sqrt(16 * qmax(4)))
    latent = w.clone().requires_grad_(True)
    quantizer(latent).sum().backward()
    assert quantizer.scale.grad is not None and quantizer.scale.grad.abs().sum() > 0
    assert quantizer.zero_point.grad is not None
    assert latent.grad is not None
    # straight-through: inside the clipping range the weight gradient is exactly 1
    codes = quantizer.codes(w)
    inside = (codes > 0) & (codes < qmax(4))
    assert torch.equal(latent.grad[inside], torch.ones_like(latent.grad[inside]))


def test_minmax_weight_quantizer_has_integer_zero_and_no_parameters() -> None:
    quantizer = MinMaxWeightQuantizer(_weight(), 4)
    assert not list(quantizer.parameters())
    assert torch.equal(quantizer.zero_point, torch.round(quantizer.zero_point))


def test_activation_clip_starts_at_init_and_learns() -> None:
    quantizer = LearnedClipActivationQuantizer(bits=4, groups=5, clip_init=0.95)
    assert torch.allclose(quantizer.clip_table(), torch.full((5, 2), 0.95))
    quantizer.set_clip_group(torch.tensor([3]))
    x = torch.randn(4, 7, 32)
    (quantizer(x) - x).pow(2).sum().backward()
    grad = quantizer.clip_logits.grad
    assert grad is not None
    assert grad[3].abs().sum() > 0 and grad[[0, 1, 2, 4]].abs().sum() == 0


def test_activation_groups_per_sample() -> None:
    quantizer = LearnedClipActivationQuantizer(bits=4, groups=3, clip_init=0.95)
    with torch.no_grad():
        quantizer.clip_logits[1] = -3.0  # group 1 clips hard
    x = torch.randn(2, 5, 16)
    quantizer.set_clip_group(torch.tensor([0, 1]))
    both = quantizer(x)
    quantizer.set_clip_group(torch.tensor([1]))
    second = quantizer(x[1:])
    assert torch.equal(both[1:], second)
    quantizer.set_clip_group(torch.tensor([0]))
    assert not torch.equal(quantizer(x[1:]), second)


def test_activation_without_group_or_with_bad_group_raises() -> None:
    quantizer = MinMaxActivationQuantizer(bits=4, groups=4)
    with pytest.raises(RuntimeError, match="no timestep group set"):
        quantizer(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"outside \[0, 3\]"):
        quantizer.set_clip_group(torch.tensor([4]))
    quantizer.set_clip_group(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="3 clip groups set for an input"):
        quantizer(torch.randn(2, 4, 8))
