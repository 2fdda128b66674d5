"""The low-bit GEMM: int8 tensor-core dot of activation codes and weight codes, fused epilogue.

For activation codes c_x [M, K_pad] (``activation_quant``) and weight codes q_w in the kernel
layout (``weight_layout``), computes::

    acc[m, n] = Σ_k c_x[m, k] · q_w[n, k]                      (int32, exact)
    y[m, n]   = (acc − z_w[n] · Σ_k c_x[m, k]) · (s_x[m] · s_w[n]) + b[n]

in the output dtype — the centred form of ``qvgen.numerics``, which needs only the per-token
code sums. Hopper has no int4 tensor-core instruction, so 4-bit codes go through the int8 dot.

Measured on an H200 (BENCHMARKS.md, kernel attempts), the int8 dot is fast only with both
operands K-major, and unpacked weight nibbles are cheapest as the dot's *left* operand: each
program computes a tile of Cᵀ = W · Xᵀ, [BLOCK_N weight rows, BLOCK_M tokens]. Two paths:

* ``GemmPath.UNPACK_IN_LOOP`` reads the split-nibble bytes and unpacks them in the K-loop
  (low nibbles against the first half of the K-block's activations, high nibbles against the
  second): least traffic, best when few tokens make the weights the main cost.
* ``GemmPath.EXPAND_THEN_INT8`` first expands the weights to int8 codes in a per-call scratch
  tensor (``weight_expand``), then runs the plain int8 dot: at video token counts the K-loop
  unpack would repeat for every token tile, the expansion happens once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any

import torch
import triton
import triton.language as tl

from qvgen.triton_support import interpreting
from service.kernels.activation_quant import QuantizedActivations
from service.kernels.gemm_configs import INTERPRETER_CONFIG, GemmConfig, configs_for
from service.kernels.weight_expand import expand_to_int8
from service.kernels.weight_layout import KernelWeightLayout

# From this many tokens on, expanding the weights once beats unpacking them per token tile.
EXPAND_MIN_TOKENS = 1024


class GemmPath(enum.Enum):
    UNPACK_IN_LOOP = "unpack-in-loop"
    EXPAND_THEN_INT8 = "expand-then-int8"


@triton.jit
def _lowbit_gemm_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    # pointers
    w_ptr,
    x_ptr,
    x_scale_ptr,
    x_sum_ptr,
    w_scale_ptr,
    w_zero_ptr,
    bias_ptr,
    y_ptr,
    # sizes
    M,
    N,
    K_PAD,
    M_BUCKET,
    SEG_N,
    # strides
    stride_wn,
    stride_xc,
    stride_xm,
    stride_ym,
    # meta-parameters
    PACKED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    # M_BUCKET only keys the autotuner (one tuning per power-of-two token count).
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    # Grouped order: GROUP_N weight tiles sweep the token tiles together, for L2 reuse.
    pids_in_group = GROUP_N * num_pid_m
    first_n = (pid // pids_in_group) * GROUP_N
    group_size = min(num_pid_n - first_n, GROUP_N)
    pid_n = first_n + (pid % pids_in_group) % group_size
    pid_m = (pid % pids_in_group) // group_size
    # Fused projections (q, k, v of one input): weight rows come in segments of SEG_N, each
    # with its own activation codes, scales and sums (slice seg of [C, M, ·]). A tile never
    # straddles two segments: SEG_N is a multiple of BLOCK_N (checked by the caller).
    seg = (pid_n * BLOCK_N) // SEG_N
    x_ptr += seg * stride_xc
    x_scale_ptr += seg * M
    x_sum_ptr += seg * M

    # Rows past the edge wrap around instead of being masked: loads stay unconditional and
    # the stores below drop the duplicates.
    rows_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    rows_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
    if PACKED:
        half = tl.arange(0, BLOCK_K // 2)
        w_ptrs = w_ptr + rows_n[:, None] * stride_wn + half[None, :]
        x_ptrs = x_ptr + rows_m[None, :] * stride_xm + half[:, None]
        for _ in range(0, K_PAD // BLOCK_K):
            packed = tl.load(w_ptrs)
            acc = tl.dot((packed & 0xF).to(tl.int8), tl.load(x_ptrs), acc, out_dtype=tl.int32)
            acc = tl.dot(
                (packed >> 4).to(tl.int8), tl.load(x_ptrs + BLOCK_K // 2), acc, out_dtype=tl.int32
            )
            w_ptrs += BLOCK_K // 2
            x_ptrs += BLOCK_K
    else:
        ks = tl.arange(0, BLOCK_K)
        w_ptrs = w_ptr + rows_n[:, None] * stride_wn + ks[None, :]
        x_ptrs = x_ptr + rows_m[None, :] * stride_xm + ks[:, None]
        for _ in range(0, K_PAD // BLOCK_K):
            acc = tl.dot(tl.load(w_ptrs), tl.load(x_ptrs), acc, out_dtype=tl.int32)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    m_ok = offs_m < M
    y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
    mask = n_ok[:, None] & m_ok[None, :]
    if STORE_ACC:
        tl.store(y_ptrs, acc, mask=mask)
    else:
        x_scale = tl.load(x_scale_ptr + offs_m, mask=m_ok, other=0.0)
        x_sum = tl.load(x_sum_ptr + offs_m, mask=m_ok, other=0).to(tl.float32)
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_ok, other=0.0)
        w_zero = tl.load(w_zero_ptr + offs_n, mask=n_ok, other=0.0)
        # acc stays exact in float32 below 2^24 (any K < 74 565 at W4A4).
        y = (acc.to(tl.float32) - w_zero[:, None] * x_sum[None, :]) * (
            w_scale[:, None] * x_scale[None, :]
        )
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _autotuned_kernel(device_index: int, segment: int | None = None) -> Any:
    """The kernel wrapped in an autotuner over the configurations of GPU ``device_index``
    (for fused projections in segments of ``segment`` outputs: those whose tiles divide it).

    Looked up once per GPU (``prepare_device`` at layer construction), never inside a traced
    region: the capability query and the autotuner's launch live behind the custom operator.
    """
    device = torch.device("cuda", device_index)
    configs = [
        triton.Config(c.meta(), num_warps=c.num_warps, num_stages=c.num_stages)
        for c in configs_for(device)
        if segment is None or segment % c.block_n == 0
    ]
    return triton.autotune(configs=configs, key=["M_BUCKET", "N", "K_PAD", "PACKED"])(
        _lowbit_gemm_kernel
    )


def prepare_device(device: torch.device) -> None:
    """Resolve the autotuned kernel of ``device`` now (layer construction), not at first call."""
    if device.type == "cuda" and not interpreting():
        _autotuned_kernel(_device_index(device))


def _device_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


def choose_path(layout: KernelWeightLayout, tokens: int) -> GemmPath:
    """Unpack in the loop for few tokens, expand once for many (see the module docstring)."""
    if layout.packed and tokens < EXPAND_MIN_TOKENS:
        return GemmPath.UNPACK_IN_LOOP
    return GemmPath.EXPAND_THEN_INT8


def _check(qa: QuantizedActivations, weight: torch.Tensor, layout: KernelWeightLayout) -> None:
    if qa.in_features != layout.in_features or qa.codes.shape[-1] != layout.padded_in_features:
        raise ValueError(
            f"activation codes {list(qa.codes.shape)} (K={qa.in_features}) "
            f"do not fit weights with K={layout.in_features}, K_pad={layout.padded_in_features}"
        )
    if tuple(weight.shape) != layout.shape:
        raise ValueError(f"kernel weight must be {layout.shape}, got {tuple(weight.shape)}")


def _gemm(
    qa: QuantizedActivations,
    weight: torch.Tensor,
    layout: KernelWeightLayout,
    epilogue: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    out_dtype: torch.dtype,
    path: GemmPath | None,
    config: GemmConfig | None,
) -> torch.Tensor:
    _check(qa, weight, layout)
    w_scale, w_zero, bias = epilogue
    segments = 1 if qa.codes.ndim == 2 else qa.codes.shape[0]
    if layout.out_features % segments:
        raise ValueError(f"{layout.out_features} outputs do not split into {segments} segments")
    return _gemm_op(
        qa.codes.reshape(segments, -1, qa.codes.shape[-1]),
        qa.scale.reshape(segments, -1),
        qa.code_sum.reshape(segments, -1),
        weight, w_scale, w_zero, bias,
        layout.in_features, layout.out_features, layout.weight_bits, layout.block_k,
        out_dtype,
        None if path is None else path.value,
        None if config is None else list(dataclasses.astuple(config)),
    )  # fmt: skip


def segments_fit(segment_features: int, device: torch.device, config: GemmConfig | None) -> bool:
    """Whether outputs in segments of ``segment_features`` can share one launch: the pinned
    tile, or on a GPU at least one autotuning candidate, must divide the segment."""
    if config is not None:
        return segment_features % config.block_n == 0
    if interpreting() or device.type != "cuda":
        return segment_features % INTERPRETER_CONFIG.block_n == 0
    return any(segment_features % c.block_n == 0 for c in configs_for(device))


@torch.library.custom_op("qvgen::lowbit_gemm", mutates_args=())
def _gemm_op(
    codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_sum: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    out_features: int,
    weight_bits: int,
    block_k: int,
    out_dtype: torch.dtype,
    path: str | None,
    config: list[int] | None,
) -> torch.Tensor:
    """y [M, N] in ``out_dtype`` (int32: the raw accumulators) for codes [C, M, K_pad] (C
    segments of N / C outputs each); ``path`` a ``GemmPath`` value or None (by token count),
    ``config`` a ``GemmConfig`` as a list or None (autotuned)."""
    layout = KernelWeightLayout(in_features, out_features, weight_bits, block_k)
    segments, m = codes.shape[0], codes.shape[1]
    out = torch.empty((m, out_features), dtype=out_dtype, device=codes.device)
    if m == 0:
        return out
    chosen = choose_path(layout, m) if path is None else GemmPath(path)
    packed = layout.packed and chosen is GemmPath.UNPACK_IN_LOOP
    if layout.packed and not packed:
        weight = expand_to_int8(weight, layout)
    x_scale, x_sum = x_scale.contiguous(), x_sum.contiguous()
    args = (
        weight, codes, x_scale, x_sum, w_scale, w_zero,
        w_scale if bias is None else bias, out,
        m, out_features, layout.padded_in_features, triton.next_power_of_2(m),
        out_features // segments,
        weight.stride(0), codes.stride(0), codes.stride(1), out.stride(0),
    )  # fmt: skip
    meta = {
        "PACKED": packed,
        "HAS_BIAS": bias is not None,
        "STORE_ACC": out_dtype == torch.int32,
        "BLOCK_K": block_k,
    }
    if config is None and not interpreting():
        segment = None if segments == 1 else out_features // segments
        kernel = _autotuned_kernel(_device_index(out.device), segment)

        def grid(meta: dict[str, int]) -> tuple[int]:
            return (triton.cdiv(out_features, meta["BLOCK_N"]) * triton.cdiv(m, meta["BLOCK_M"]),)

        kernel[grid](*args, **meta)
        return out
    cfg = INTERPRETER_CONFIG if config is None else GemmConfig(*config)
    grid_size = triton.cdiv(out_features, cfg.block_n) * triton.cdiv(m, cfg.block_m)
    _lowbit_gemm_kernel[(grid_size,)](
        *args, **meta, **cfg.meta(), num_warps=cfg.num_warps, num_stages=cfg.num_stages
    )
    return out


@_gemm_op.register_fake
def _gemm_fake(
    codes: torch.Tensor,
    x_scale: torch.Tensor,
    x_sum: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    out_features: int,
    weight_bits: int,
    block_k: int,
    out_dtype: torch.dtype,
    path: str | None,
    config: list[int] | None,
) -> torch.Tensor:
    return codes.new_empty((codes.shape[1], out_features), dtype=out_dtype)


def lowbit_linear(
    qa: QuantizedActivations,
    weight: torch.Tensor,
    layout: KernelWeightLayout,
    epilogue: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    out_dtype: torch.dtype,
    path: GemmPath | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """y [M, N] in ``out_dtype``; ``epilogue`` = (s_w, z_w, bias or None), float32 [N] each.

    ``path`` None picks by token count; ``config`` None autotunes on the GPU (tests pin one).
    Runs as the custom operator ``qvgen::lowbit_gemm`` (traceable by ``torch.compile``).
    """
    return _gemm(qa, weight, layout, epilogue, out_dtype, path, config)


def integer_products(
    qa: QuantizedActivations,
    weight: torch.Tensor,
    layout: KernelWeightLayout,
    path: GemmPath,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """The raw accumulators Σ_k c_x q_w, int32 [M, N] (for exactness checks)."""
    dummy = torch.zeros(layout.out_features, dtype=torch.float32, device=qa.codes.device)
    return _gemm(qa, weight, layout, (dummy, dummy, None), torch.int32, path, config)


def tuned_configs() -> dict[str, str]:
    """The configuration the autotuner picked per key so far, on the current GPU (for reports)."""
    if not torch.cuda.is_available():
        return {}
    kernel = _autotuned_kernel(torch.cuda.current_device())
    return {str(key): str(config) for key, config in kernel.cache.items()}
