"""Weight codes in bytes: two 4-bit codes per byte, or one code per byte above 4 bits.

Nibble order (format v1): byte j of a row holds k = 2j in its low nibble and k = 2j + 1 in its
high nibble; an odd K leaves the last high nibble 0. 2- and 3-bit codes use 4-bit containers.
"""

from __future__ import annotations

import torch

from qvgen.numerics import check_bits, qmax

NIBBLE_BITS = 4


def container_bits(bits: int) -> int:
    """Bits of storage one code of a ``bits``-bit quantizer takes: 4 up to 4 bits, else 8."""
    check_bits(bits, "bits")
    return NIBBLE_BITS if bits <= NIBBLE_BITS else 8


def packed_columns(in_features: int, bits: int) -> int:
    """Bytes per row of packed codes for K = ``in_features``."""
    return (in_features + 1) // 2 if container_bits(bits) == NIBBLE_BITS else in_features


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes [N, K] (any dtype holding values in [0, 2^bits − 1]) into uint8."""
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    c = codes.to(torch.int32)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > qmax(bits)):
        raise ValueError(
            f"codes must lie in [0, {qmax(bits)}] for {bits} bits, got {int(c.min())}..{int(c.max())}"
        )
    if container_bits(bits) != NIBBLE_BITS:
        return c.to(torch.uint8)
    n, k = c.shape
    if k % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    low, high = c[:, 0::2], c[:, 1::2]
    packed = (low | (high << NIBBLE_BITS)).to(torch.uint8)
    assert packed.shape == (n, packed_columns(k, bits))
    return packed


def unpack_codes(packed: torch.Tensor, in_features: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: uint8 [N, ⌈K/2⌉] (or [N, K]) → int32 codes [N, K]."""
    if packed.dtype != torch.uint8 or packed.ndim != 2:
        raise ValueError(
            f"packed codes must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    expected = packed_columns(in_features, bits)
    if packed.shape[1] != expected:
        raise ValueError(
            f"packed codes have {packed.shape[1]} columns, expected {expected} for K={in_features} "
            f"at {bits} bits"
        )
    p = packed.to(torch.int32)
    if container_bits(bits) != NIBBLE_BITS:
        return p
    codes = torch.stack((p & 0xF, p >> NIBBLE_BITS), dim=-1).reshape(p.shape[0], -1)
    return codes[:, :in_features].contiguous()
