"""Tile configurations of the low-bit GEMM for Hopper (sm_90) and Ampere (sm_80).

Tiles are named as the kernel computes them: a tile of Cᵀ with BLOCK_N weight rows (the dot's
left operand) by BLOCK_M tokens. BLOCK_K is fixed per layer by its weight layout (the K-block of
the split nibble packing), so it is not tuned here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GemmConfig:
    """One launch configuration (BLOCK_K comes from the weight layout)."""

    block_n: int
    block_m: int
    group_n: int
    num_warps: int
    num_stages: int

    def meta(self) -> dict[str, int]:
        return {"BLOCK_N": self.block_n, "BLOCK_M": self.block_m, "GROUP_N": self.group_n}


# sm_90: 228 KB shared memory. Ordered by a sweep on an H200 (Triton 3.6, M = 32760): 128×128
# tiles with one warpgroup and 3 stages led for the int8 dot at every shape (1035–1256 TOPS),
# 64×256 / 128×128 for the unpack-in-loop dot; the small tiles keep all 132 SMs busy at M = 256.
_HOPPER = (
    GemmConfig(128, 128, 8, 4, 3),
    GemmConfig(64, 256, 8, 4, 3),
    GemmConfig(256, 128, 8, 8, 3),
    GemmConfig(256, 128, 8, 8, 4),
    GemmConfig(128, 256, 8, 8, 4),
    GemmConfig(128, 128, 8, 4, 4),
    GemmConfig(64, 128, 8, 4, 4),
    GemmConfig(128, 64, 8, 4, 4),
    GemmConfig(64, 64, 8, 4, 4),
)

# sm_80: 164 KB shared memory (A100), mma.sync m16n8k32 int8; 128×128 with 4 warps is the
# usual sweet spot, the larger tiles help at large M.
_AMPERE = (
    GemmConfig(128, 256, 8, 8, 3),
    GemmConfig(256, 128, 8, 8, 3),
    GemmConfig(128, 128, 8, 4, 4),
    GemmConfig(64, 128, 8, 4, 4),
    GemmConfig(128, 64, 8, 4, 4),
    GemmConfig(64, 64, 8, 4, 4),
)

# Tiles for Triton's CPU interpreter (tests), where each program costs milliseconds.
INTERPRETER_CONFIG = GemmConfig(64, 64, 2, 4, 1)


def configs_for(device: torch.device) -> tuple[GemmConfig, ...]:
    """The autotuning candidates for ``device`` (a CUDA GPU of compute capability 8.x or 9.x)."""
    major, minor = torch.cuda.get_device_capability(device)
    if major == 9:
        return _HOPPER
    if major == 8:
        return _AMPERE
    raise ValueError(f"no GEMM configurations for sm_{major}{minor}; supported: sm_8x, sm_90")
