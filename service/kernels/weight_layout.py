"""The kernels' weight layout: format v1 codes repacked once, at load time.

Format v1 interleaves nibbles (byte j holds k = 2j low, k = 2j + 1 high). Unpacking that in the
GEMM's K-loop needs a join and a reshape of the tile, which measured 1.05× bf16 on an H200
against 1.15× for the layout used here (BENCHMARKS.md, kernel attempts): nibbles **split per
K-block**. With block width B (= the GEMM's BLOCK_K), K is zero-padded to K_pad, a multiple of
B, and byte j of block b holds

    low nibble:  q_w[n, b·B + j]            high nibble:  q_w[n, b·B + B/2 + j]      (0 ≤ j < B/2)

so one masked AND and one shift turn a [rows, B/2] byte tile into the two halves of the code
tile, each fed to its own dot. Codes wider than 4 bits keep one int8 per code, [N, K_pad].
Padded codes are 0 and the activation codes are padded with 0 as well, so padding adds nothing
to Σ_k c_x q_w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qvgen.packing import NIBBLE_BITS, container_bits, pack_codes

# K-block width of the layout on the GPU: the int8 tensor-core dot's natural BLOCK_K on sm_80/90.
DEFAULT_BLOCK_K = 128
# Codes must fit a signed int8 operand of the tensor-core dot.
MAX_KERNEL_BITS = 7


def padded_width(in_features: int, block_k: int) -> int:
    """K rounded up to a multiple of ``block_k``."""
    return -(-in_features // block_k) * block_k


@dataclass(frozen=True)
class KernelWeightLayout:
    """Shape facts of one layer's repacked weights.

    ``packed`` is True for ≤ 4-bit codes (uint8 [N, K_pad/2], split nibbles); otherwise the
    codes are int8 [N, K_pad].
    """

    in_features: int
    out_features: int
    weight_bits: int
    block_k: int

    def __post_init__(self) -> None:
        if self.weight_bits > MAX_KERNEL_BITS:
            raise ValueError(
                f"weight_bits={self.weight_bits}: the int8 kernels hold codes of at most "
                f"{MAX_KERNEL_BITS} bits"
            )
        if self.block_k < 2 or self.block_k % 32:
            raise ValueError(f"block_k must be a positive multiple of 32, got {self.block_k}")

    @property
    def packed(self) -> bool:
        return container_bits(self.weight_bits) == NIBBLE_BITS

    @property
    def padded_in_features(self) -> int:
        return padded_width(self.in_features, self.block_k)

    @property
    def shape(self) -> tuple[int, int]:
        k_pad = self.padded_in_features
        return (self.out_features, k_pad // 2 if self.packed else k_pad)


def to_kernel_layout(codes: torch.Tensor, layout: KernelWeightLayout) -> torch.Tensor:
    """Unsigned codes [N, K] (integer valued) → the kernel layout described in the module doc."""
    n, k = layout.out_features, layout.in_features
    if tuple(codes.shape) != (n, k):
        raise ValueError(f"codes must be [{n}, {k}], got {tuple(codes.shape)}")
    c = torch.nn.functional.pad(codes.to(torch.int32), (0, layout.padded_in_features - k))
    if not layout.packed:
        return c.to(torch.int8).contiguous()
    half = layout.block_k // 2
    blocks = c.view(n, -1, 2, half)
    low, high = blocks[:, :, 0, :], blocks[:, :, 1, :]
    packed = (low | (high << NIBBLE_BITS)).to(torch.uint8).reshape(n, -1)
    assert tuple(packed.shape) == layout.shape
    return packed.contiguous()


def codes_from_kernel_layout(
    kernel_weight: torch.Tensor, layout: KernelWeightLayout
) -> torch.Tensor:
    """Inverse of ``to_kernel_layout``: int32 codes [N, K]."""
    if tuple(kernel_weight.shape) != layout.shape:
        raise ValueError(f"kernel weight must be {layout.shape}, got {tuple(kernel_weight.shape)}")
    n, k = layout.out_features, layout.in_features
    w = kernel_weight.to(torch.int32)
    if not layout.packed:
        return w[:, :k].contiguous()
    blocks = w.view(n, -1, 1, layout.block_k // 2)
    codes = torch.cat((blocks & 0xF, blocks >> NIBBLE_BITS), dim=2).reshape(n, -1)
    return codes[:, :k].contiguous()


def format_v1_from_kernel_layout(
    kernel_weight: torch.Tensor, layout: KernelWeightLayout
) -> torch.Tensor:
    """The format v1 ``qweight`` of a layer held in the kernel layout."""
    return pack_codes(codes_from_kernel_layout(kernel_weight, layout), layout.weight_bits)
