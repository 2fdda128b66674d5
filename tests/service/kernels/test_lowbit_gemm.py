"""The low-bit GEMM against the reference: exact integer accumulators, outputs to rounding."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from qvgen.numerics import qmax, quantize_tokens
from service.kernels.activation_quant import quantize_activations
from service.kernels.gemm_configs import GemmConfig
from service.kernels.lowbit_gemm import GemmPath, integer_products, lowbit_linear
from service.kernels.reference import integer_matmul, quantized_linear_reference
from service.kernels.weight_layout import KernelWeightLayout, to_kernel_layout
from tests.service.kernels.compare import assert_close_verbose

BLOCK_K = 64
# Small tiles so that even tiny shapes span several programs (interpreter and GPU alike).
CONFIG = GemmConfig(block_n=32, block_m=32, group_n=2, num_warps=4, num_stages=2)
# One bf16 ulp, relative: round-to-nearest on the GPU, truncation in Triton's interpreter.
BF16_ROUNDING = 2.0**-7


def make_case(m: int, k: int, n: int, bits: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16),
        "clip": 0.6 + 0.4 * torch.rand(m, 2, generator=g),
        "codes": torch.randint(0, qmax(bits) + 1, (n, k), generator=g),
        "scale": 0.001 + 0.01 * torch.rand(n, generator=g),
        "zero": qmax(bits) * torch.rand(n, generator=g),
        "bias": torch.randn(n, generator=g),
    }


def run_kernel(
    case: dict[str, torch.Tensor], bits: int, device: torch.device, path: GemmPath, bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 accumulators, float32 outputs) of the kernel path."""
    n, k = case["codes"].shape
    layout = KernelWeightLayout(k, n, bits, BLOCK_K)
    weight = to_kernel_layout(case["codes"], layout).to(device)
    qa = quantize_activations(case["x"].to(device), case["clip"].to(device), bits, BLOCK_K)
    acc = integer_products(qa, weight, layout, path, CONFIG)
    epilogue = (
        case["scale"].to(device),
        case["zero"].to(device),
        case["bias"].to(device) if bias else None,
    )
    y = lowbit_linear(qa, weight, layout, epilogue, torch.float32, path, CONFIG)
    return acc, y


@pytest.mark.parametrize("path", list(GemmPath))
@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("m", [1, 7, 33, 128])
def test_accumulators_exact_and_outputs_match(
    path: GemmPath, bits: int, m: int, device: torch.device
) -> None:
    k, n = 200, 37  # K not a multiple of the block, N odd
    case = make_case(m, k, n, bits, seed=m * 10 + bits)
    acc, y = run_kernel(case, bits, device, path, bias=True)

    tq = quantize_tokens(case["x"], case["clip"][:, 0:1], case["clip"][:, 1:2], bits)
    expected_acc = integer_matmul(tq.codes, case["codes"], qmax(bits) ** 2)
    assert_close_verbose(acc, expected_acc, 0, 0, f"W{bits}A{bits} int32 accumulators")

    ref = quantized_linear_reference(
        case["x"],
        case["codes"],
        case["scale"],
        case["zero"],
        case["bias"],
        case["clip"],
        bits,
        bits,
    )
    # Same float32 expressions; only a contracted multiply-add may differ in the last bits.
    atol = 1e-6 * float(ref.abs().max())
    assert_close_verbose(y, ref, 1e-5, atol, f"W{bits}A{bits} float32 outputs")


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_outputs_within_rounding(
    out_dtype: torch.dtype, device: torch.device
) -> None:
    case = make_case(33, 100, 45, 4, seed=11)
    n, k = case["codes"].shape
    layout = KernelWeightLayout(k, n, 4, BLOCK_K)
    weight = to_kernel_layout(case["codes"], layout).to(device)
    qa = quantize_activations(case["x"].to(device), case["clip"].to(device), 4, BLOCK_K)
    epilogue = (case["scale"].to(device), case["zero"].to(device), None)
    y = lowbit_linear(qa, weight, layout, epilogue, out_dtype, GemmPath.UNPACK_IN_LOOP, CONFIG)
    ref = quantized_linear_reference(
        case["x"], case["codes"], case["scale"], case["zero"], None, case["clip"], 4, 4
    )
    assert y.dtype == out_dtype
    atol = 1e-6 * float(ref.abs().max())
    assert_close_verbose(y, ref, BF16_ROUNDING, atol, f"{out_dtype} outputs")


def test_wider_codes_in_int8_containers(device: torch.device) -> None:
    """W6A6: codes take whole bytes, no nibbles to unpack."""
    case = make_case(7, 100, 9, 6, seed=3)
    acc, _ = run_kernel(case, 6, device, GemmPath.EXPAND_THEN_INT8, bias=False)
    tq = quantize_tokens(case["x"], case["clip"][:, 0:1], case["clip"][:, 1:2], 6)
    expected = integer_matmul(tq.codes, case["codes"], qmax(6) ** 2)
    assert_close_verbose(acc, expected, 0, 0, "W6A6 int32 accumulators")


def test_mismatched_widths_are_refused(device: torch.device) -> None:
    case = make_case(4, 100, 8, 4, seed=1)
    layout = KernelWeightLayout(128, 8, 4, BLOCK_K)
    weight = torch.zeros(layout.shape, dtype=torch.uint8, device=device)
    qa = quantize_activations(case["x"].to(device), case["clip"].to(device), 4, BLOCK_K)
    with pytest.raises(ValueError, match="do not fit"):
        integer_products(qa, weight, layout, GemmPath.UNPACK_IN_LOOP, CONFIG)
