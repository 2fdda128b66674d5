"""Repacking format v1 codes into the kernels' split-nibble layout, and expanding it on device."""

from __future__ import annotations

import pytest
import torch

from qvgen.packing import pack_codes
from service.kernels.weight_layout import (
    KernelWeightLayout,
    codes_from_kernel_layout,
    format_v1_from_kernel_layout,
    to_kernel_layout,
)
from tests.service.kernels.compare import assert_close_verbose


def random_codes(n: int, k: int, bits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, (n, k), generator=g)


def test_split_nibbles_hold_k_and_k_plus_half_block() -> None:
    layout = KernelWeightLayout(in_features=70, out_features=3, weight_bits=4, block_k=32)
    codes = random_codes(3, 70, 4, seed=0)
    packed = to_kernel_layout(codes, layout).to(torch.int32)
    assert packed.shape == (3, 48)  # K_pad = 96: three blocks of 16 bytes
    padded = torch.nn.functional.pad(codes, (0, 26))
    for block in range(3):
        for j in range(16):
            byte = packed[:, block * 16 + j]
            assert torch.equal(byte & 0xF, padded[:, block * 32 + j])
            assert torch.equal(byte >> 4, padded[:, block * 32 + 16 + j])


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("k", [1, 33, 64, 100])
def test_round_trip_to_format_v1(bits: int, k: int) -> None:
    layout = KernelWeightLayout(in_features=k, out_features=5, weight_bits=bits, block_k=64)
    codes = random_codes(5, k, bits, seed=k + bits)
    kernel_weight = to_kernel_layout(codes, layout)
    assert tuple(kernel_weight.shape) == layout.shape
    assert torch.equal(codes_from_kernel_layout(kernel_weight, layout), codes)
    assert torch.equal(format_v1_from_kernel_layout(kernel_weight, layout), pack_codes(codes, bits))


def test_rejects_codes_too_wide_for_int8() -> None:
    with pytest.raises(ValueError, match="at most 7 bits"):
        KernelWeightLayout(in_features=8, out_features=8, weight_bits=8, block_k=64)


def test_expand_kernel_writes_one_code_per_byte(device: torch.device) -> None:
    pytest.importorskip("triton")
    from service.kernels.weight_expand import expand_to_int8

    layout = KernelWeightLayout(in_features=200, out_features=67, weight_bits=4, block_k=64)
    codes = random_codes(67, 200, 4, seed=5)
    expanded = expand_to_int8(to_kernel_layout(codes, layout).to(device), layout)
    expected = torch.nn.functional.pad(codes, (0, 56))
    assert expanded.dtype == torch.int8
    assert_close_verbose(expanded, expected, 0, 0, "expanded codes")
