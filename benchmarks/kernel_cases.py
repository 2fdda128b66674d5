"""The linear shapes and the timed variants of ``qvgen bench kernels``.

Shapes: the q/k/v/o (dim → dim), FFN up (dim → ffn) and FFN down (ffn → dim) linears of
Wan 2.1 1.3B / 14B and CogVideoX-2B, at the token count of one video (81 × 480 × 832 for Wan,
49 × 480 × 720 for CogVideoX) and at 256 tokens. Every variant computes the same y [M, N] in
bf16 from a bf16 x [M, K]; the baselines' weights are prepared beforehand, as a server would.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from service.kernels.activation_quant import QuantizedActivations, quantize_activations
from service.kernels.lowbit_gemm import GemmPath, lowbit_linear
from service.kernels.weight_layout import DEFAULT_BLOCK_K, KernelWeightLayout, to_kernel_layout

SMALL_TOKENS = 256
BITS = 4


@dataclass(frozen=True)
class ModelShape:
    name: str
    dim: int
    ffn: int
    tokens: int


MODELS = (
    ModelShape("wan2.1-1.3b", 1536, 8960, 32760),
    ModelShape("wan2.1-14b", 5120, 13824, 32760),
    ModelShape("cogvideox-2b", 1920, 7680, 17776),
)


@dataclass(frozen=True)
class LinearCase:
    model: str
    layer: str
    m: int
    k: int
    n: int

    @property
    def ops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    @property
    def label(self) -> str:
        return f"{self.model} {self.layer} {self.m}×{self.k}→{self.n}"


def linear_cases(models: tuple[ModelShape, ...] = MODELS) -> list[LinearCase]:
    cases = []
    for model in models:
        for m in (model.tokens, SMALL_TOKENS):
            cases += [
                LinearCase(model.name, "qkvo", m, model.dim, model.dim),
                LinearCase(model.name, "ffn_up", m, model.dim, model.ffn),
                LinearCase(model.name, "ffn_down", m, model.ffn, model.dim),
            ]
    return cases


class KernelVariant(enum.Enum):
    """One implementation of a linear layer timed against the others at one shape."""

    BF16 = "bf16"  # torch.matmul, cuBLAS
    W8A8 = "w8a8"  # per-token int8 quantization (eager torch) + torch._int_mm + dequant
    W8A8_GEMM = "w8a8-gemm"  # torch._int_mm alone
    FP8_TENSOR = "fp8-tensor"  # torch._scaled_mm, per-tensor scales, GEMM alone
    FP8_ROW = "fp8-row"  # torch._scaled_mm, rowwise scales, GEMM alone
    OURS = "ours"  # activation quantization + low-bit GEMM, path chosen by token count
    OURS_GEMM = "ours-gemm"  # low-bit GEMM alone (weight expansion included when chosen)
    OURS_QUANT = "ours-quant"  # activation quantization alone
    GEMM_UNPACK = "gemm-unpack"  # GEMM alone, nibbles unpacked in the K-loop
    GEMM_EXPAND = "gemm-expand"  # GEMM alone, weights expanded to int8 first


def _w8a8(x: torch.Tensor, w8_t: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric per-token int8 activations, per-channel int8 weights, cuBLASLt int8 GEMM."""
    x_scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-8) / 127.0
    q = torch.round(x.float() / x_scale).to(torch.int8)
    return (torch._int_mm(q, w8_t).float() * (x_scale * w_scale)).to(torch.bfloat16)


def _baselines(case: LinearCase, x: torch.Tensor) -> dict[KernelVariant, Callable[[], object]]:
    device = x.device
    w = torch.randn(case.n, case.k, device=device, dtype=torch.bfloat16) * 0.02
    w8_t = torch.randint(-127, 128, (case.n, case.k), device=device, dtype=torch.int8).t()
    w_scale = torch.full((1, case.n), 1e-3, device=device)
    q8 = torch.randint(-127, 128, (case.m, case.k), device=device, dtype=torch.int8)
    x8 = x.to(torch.float8_e4m3fn)
    w8f_t = w.to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device)
    row_a = torch.ones(case.m, 1, device=device)
    row_b = torch.ones(1, case.n, device=device)
    return {
        KernelVariant.BF16: lambda: torch.matmul(x, w.t()),
        KernelVariant.W8A8: lambda: _w8a8(x, w8_t, w_scale),
        KernelVariant.W8A8_GEMM: lambda: torch._int_mm(q8, w8_t),
        KernelVariant.FP8_TENSOR: lambda: torch._scaled_mm(
            x8, w8f_t, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True
        ),
        KernelVariant.FP8_ROW: lambda: torch._scaled_mm(
            x8, w8f_t, scale_a=row_a, scale_b=row_b, out_dtype=torch.bfloat16, use_fast_accum=True
        ),
    }


def _ours(case: LinearCase, x: torch.Tensor) -> dict[KernelVariant, Callable[[], object]]:
    device = x.device
    layout = KernelWeightLayout(case.k, case.n, BITS, DEFAULT_BLOCK_K)
    codes = torch.randint(0, 1 << BITS, (case.n, case.k), device=device)
    weight = to_kernel_layout(codes, layout)
    epilogue = (
        0.001 + 0.01 * torch.rand(case.n, device=device),
        (1 << BITS) * torch.rand(case.n, device=device),
        None,
    )
    clip = torch.full((case.m, 2), 0.9, device=device)
    qa = quantize_activations(x, clip, BITS, layout.block_k)

    def gemm(q: QuantizedActivations, path: GemmPath | None = None) -> torch.Tensor:
        return lowbit_linear(q, weight, layout, epilogue, torch.bfloat16, path)

    return {
        KernelVariant.OURS: lambda: gemm(quantize_activations(x, clip, BITS, layout.block_k)),
        KernelVariant.OURS_GEMM: lambda: gemm(qa),
        KernelVariant.OURS_QUANT: lambda: quantize_activations(x, clip, BITS, layout.block_k),
        KernelVariant.GEMM_UNPACK: lambda: gemm(qa, GemmPath.UNPACK_IN_LOOP),
        KernelVariant.GEMM_EXPAND: lambda: gemm(qa, GemmPath.EXPAND_THEN_INT8),
    }


def build_variants(
    case: LinearCase, device: torch.device
) -> dict[KernelVariant, Callable[[], object]]:
    """Every variant of ``case`` as a no-argument callable, inputs allocated on ``device``."""
    x = torch.randn(case.m, case.k, device=device, dtype=torch.bfloat16)
    return {**_baselines(case, x), **_ours(case, x)}
