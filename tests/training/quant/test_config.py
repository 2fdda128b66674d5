from __future__ import annotations

import pytest

from training.quant.config import ActivationQuantizerKind, QuantScheme, WeightQuantizerKind


def test_round_trip_through_dict() -> None:
    scheme = QuantScheme(weight_bits=3, activation_bits=3, clip_groups=10)
    assert QuantScheme.from_dict(scheme.to_dict()) == scheme
    assert scheme.label == "W3A3"


def test_unknown_key_rejected_with_allowed_list() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['wbits'\]"):
        QuantScheme.from_dict({"wbits": 4})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight_bits", 9, r"weight_bits must be an integer in \[2, 8\]"),
        ("activation_bits", 1, r"activation_bits must be an integer in \[2, 8\]"),
        ("clip_groups", 0, r"clip_groups must be an integer in \[1, 1000\]"),
        ("clip_init", 1.5, r"clip_init must lie in \(0, 1\]"),
        ("weight_granularity", "per_token", "weight_granularity must be per_channel"),
        ("weight_quantizer", "gptq", r"'gptq' is not one of \['lsq_plus', 'minmax'\]"),
    ],
)
def test_bad_values_name_field_and_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantScheme.from_dict({field: value})


def test_rtn_scheme_has_no_learnable_quantizer() -> None:
    scheme = QuantScheme.rtn(4, 4)
    assert scheme.weight_quantizer is WeightQuantizerKind.MINMAX
    assert scheme.activation_quantizer is ActivationQuantizerKind.MINMAX
