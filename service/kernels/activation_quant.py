"""Per-token activation quantization in one pass: x [M, K] → centred int8 codes, s_x, Σ_k c_x.

Computes exactly ``qvgen.numerics.quantize_tokens`` (same float32 expressions, same order,
IEEE round-to-nearest divisions through ``tl.math.div_rn``, rounding floor(v + 0.5))::

    lo = min(α_lo · min_k x, 0)      hi = max(α_hi · max_k x, 0)
    s_x = max((hi − lo) / (2^b − 1), EPS)      z_x = clamp(round(−lo / s_x), 0, 2^b − 1)
    c_x = clamp(round(x / s_x) + z_x, 0, 2^b − 1) − z_x                 ∈ [−(2^b − 1), 2^b − 1]

x is read from memory once and the codes written once: short rows stay in registers; long
rows are read in chunks twice (extremes, then codes), the second time from L2, which keeps every
lane busy where a power-of-two register tile would idle up to 45 % of them (K = 8960).

**Container choice: int8, not packed int4.** The GEMM is compute-bound at video token counts:
at M = 32760, K = 5120 writing int8 codes instead of nibbles costs 84 MB more traffic, about
0.03 ms at 3 TB/s, against a ~4 ms GEMM, while unpacking an operand inside the GEMM's K-loop
cost 20–40 % of the int8 dot's speed on an H200 (BENCHMARKS.md, kernel attempts). Centred codes
need 2^b − 1 ≤ 127, so activations of up to 7 bits fit; the epilogue then needs only the
per-token code sums, no per-channel weight sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qvgen.numerics import EPS, check_bits, qmax
from qvgen.triton_numerics import token_scale_zero
from qvgen.triton_support import interpreting
from service.kernels.weight_layout import MAX_KERNEL_BITS, padded_width

# One pass (whole rows in registers) unless the power-of-two tile would leave more than this
# fraction of its lanes idle.
_MAX_IDLE_FRACTION = 0.2
# One pass paid off only for long rows: K = 7680 (0.14 vs 0.17 ms) and 13824, not K = 1920
# (0.076 vs 0.059 ms chunked), on an H200.
_ONE_PASS_MIN = 4096
# Elements of x per program in one-pass mode (several short rows per program).
_ONE_PASS_ELEMENTS = 2048
# Longest chunk of the two-phase mode.
_CHUNK_MAX = 1024
# Elements of x per program in the two-phase mode: small enough that the re-read hits L2.
_ROW_ELEMENTS = 10240
# Elements of x per program under Triton's CPU interpreter (tests), where each program costs
# milliseconds of Python whatever its size: a test's whole activation in one or a few programs.
_INTERPRETER_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class QuantLaunch:
    """How rows are split among programs: ``block_m`` rows per program, read ``chunk`` columns
    at a time (a power of two; ``chunk`` ≥ K_pad keeps each row in registers in one pass)."""

    block_m: int
    chunk: int
    num_warps: int


@dataclass(frozen=True)
class QuantizedActivations:
    """Activations ready for the GEMM.

    codes: int8 [M, K_pad], centred codes c_x, zero beyond ``in_features``.
    scale: float32 [M], s_x.
    code_sum: int32 [M], Σ_k c_x.

    ``quantize_activations_shared`` gives C of them stacked: [C, M, K_pad], [C, M], [C, M].
    """

    codes: torch.Tensor
    scale: torch.Tensor
    code_sum: torch.Tensor
    in_features: int


@triton.jit
def _centred_codes(x, scale, recip, zero, levels):
    """c_x = clamp(round(x / s_x) + z_x, 0, 2^b − 1) − z_x as int32, for a [rows, cols] tile.

    x / s_x must be the IEEE quotient. One division per element is the kernel's most costly
    instruction sequence, so the quotient comes from Markstein's correction instead: with
    recip = RN(1 / s_x), q0 = RN(x · recip) is within one ulp of x / s_x, the residual
    x − s_x · q0 is exact through an FMA, and RN(q0 + residual · recip) is then the correctly
    rounded quotient (Markstein 1990; Muller et al., Handbook of Floating-Point Arithmetic).
    """
    q0 = x * recip[:, None]
    residual = tl.fma(-scale[:, None], q0, x)
    quotient = tl.fma(residual, recip[:, None], q0)
    q = tl.floor(quotient + 0.5) + zero[:, None]
    q = tl.minimum(tl.maximum(q, 0.0), levels[:, None])
    return (q - zero[:, None]).to(tl.int32)


@triton.jit
def _quantize_tokens_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    # pointers
    x_ptr,
    clip_ptr,
    codes_ptr,
    scale_ptr,
    sum_ptr,
    # sizes
    M,
    K,
    K_PAD,
    # strides
    stride_xm,
    stride_clip_c,
    stride_clip_m,
    stride_codes_c,
    stride_codes_m,
    # meta-parameters
    LEVELS: tl.constexpr,
    EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    NUM_CLIPS: tl.constexpr,
):
    # NUM_CLIPS clip tables quantize the same x (q, k and v of one input): the extremes are
    # measured once, then each table's codes go to its own slice [c] of codes, scale and sum.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, CHUNK)
    row_ok = rows < M
    x_rows = x_ptr + rows[:, None] * stride_xm
    code_rows = codes_ptr + rows[:, None] * stride_codes_m
    # Columns past K load as 0 (and the running extremes start at 0). That cannot move lo or
    # hi, which are clamped to include 0, and it quantizes to c_x = 0: exactly the zero
    # padding the GEMM's K-blocks need.
    if ONE_CHUNK:
        x = tl.load(x_rows + cols[None, :], mask=row_ok[:, None] & (cols[None, :] < K), other=0.0)
        x = x.to(tl.float32)
        x_min = tl.min(x, axis=1)
        x_max = tl.max(x, axis=1)
    else:
        run_min = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
        run_max = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
        for k0 in range(0, K, CHUNK):
            mask = row_ok[:, None] & (k0 + cols[None, :] < K)
            xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            run_min = tl.minimum(run_min, xc)
            run_max = tl.maximum(run_max, xc)
        x_min = tl.min(run_min, axis=1)
        x_max = tl.max(run_max, axis=1)

    for c in tl.static_range(NUM_CLIPS):
        _, _, _, scale, zero = token_scale_zero(
            clip_ptr + c * stride_clip_c,
            rows,
            stride_clip_m,
            row_ok,
            x_min,
            x_max,
            LEVELS,
            EPSILON,
            BLOCK_M,
        )
        levels = tl.full([BLOCK_M], LEVELS, tl.float32)
        recip = tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32), scale)
        tl.store(scale_ptr + c * M + rows, scale, mask=row_ok)

        if ONE_CHUNK:
            codes = _centred_codes(x, scale, recip, zero, levels)
            tl.store(
                code_rows + c * stride_codes_c + cols[None, :],
                codes.to(tl.int8),
                mask=row_ok[:, None] & (cols[None, :] < K_PAD),
            )
            tl.store(sum_ptr + c * M + rows, tl.sum(codes, axis=1), mask=row_ok)
        else:
            sums = tl.zeros([BLOCK_M, CHUNK], dtype=tl.int32)
            for k0 in range(0, K_PAD, CHUNK):
                # The second read of the rows mostly hits L2: a program's rows are a few tens of KB.
                mask = row_ok[:, None] & (k0 + cols[None, :] < K)
                xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                codes = _centred_codes(xc, scale, recip, zero, levels)
                tl.store(
                    code_rows + c * stride_codes_c + k0 + cols[None, :],
                    codes.to(tl.int8),
                    mask=row_ok[:, None] & (k0 + cols[None, :] < K_PAD),
                )
                sums += codes
            tl.store(sum_ptr + c * M + rows, tl.sum(sums, axis=1), mask=row_ok)


def default_launch(k_pad: int, tokens: int) -> QuantLaunch:
    """Whole rows in registers unless a power-of-two tile would idle many lanes; else chunks
    that divide K_pad. Measured on an H200 (M = 32760): one pass won at K = 13824 (0.50 ms
    against 0.58 chunked), chunks won at K = 1536, 5120, 8960 where the tile idles 25–45 %."""
    full = triton.next_power_of_2(k_pad)
    # At least ~2 programs per SM of an H100/H200 when there are few tokens.
    row_cap = _pow2_floor(max(1, tokens // 264))
    if full >= _ONE_PASS_MIN and (full - k_pad) <= _MAX_IDLE_FRACTION * full:
        rows = min(row_cap, _pow2_floor(max(1, _ONE_PASS_ELEMENTS // full)))
        return QuantLaunch(block_m=rows, chunk=full, num_warps=8 if full >= 8192 else 4)
    chunk = min(_CHUNK_MAX, k_pad & -k_pad)  # largest power of two dividing K_pad
    rows = min(row_cap, _pow2_floor(max(1, _ROW_ELEMENTS // k_pad)))
    return QuantLaunch(block_m=rows, chunk=chunk, num_warps=4)


def interpreter_launch(k_pad: int, tokens: int) -> QuantLaunch:
    """Whole rows, as many per program as ``_INTERPRETER_ELEMENTS`` allows."""
    full = triton.next_power_of_2(k_pad)
    rows = min(triton.next_power_of_2(tokens), _pow2_floor(max(1, _INTERPRETER_ELEMENTS // full)))
    return QuantLaunch(block_m=rows, chunk=full, num_warps=4)


def _pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1)


def quantize_activations(
    x2d: torch.Tensor,
    clip: torch.Tensor,
    bits: int,
    block_k: int,
    launch: QuantLaunch | None = None,
) -> QuantizedActivations:
    """Quantize x [M, K] (bf16, fp16 or fp32) per token with per-row clip factors [M, 2].

    Codes come back zero-padded to a multiple of ``block_k`` columns (the GEMM's K-block).
    ``launch`` None picks ``default_launch`` (``interpreter_launch`` under the interpreter).
    The kernel runs as the custom operator ``qvgen::quantize_activations``, so
    ``torch.compile`` traces through this call without a graph break (the operator's fake
    implementation gives the output shapes).
    """
    check_bits(bits, "activation bits")
    if bits > MAX_KERNEL_BITS:
        raise ValueError(f"activation bits must be ≤ {MAX_KERNEL_BITS} for int8 codes, got {bits}")
    if x2d.ndim != 2 or x2d.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(
            f"x must be a 2-D bf16/fp16/fp32 tensor, got {x2d.dtype} {tuple(x2d.shape)}"
        )
    m = x2d.shape[0]
    if tuple(clip.shape) != (m, 2):
        raise ValueError(f"clip must be [{m}, 2], got {tuple(clip.shape)}")
    shape = None if launch is None else [launch.block_m, launch.chunk, launch.num_warps]
    codes, scale, code_sum = _quantize_op(x2d, clip.unsqueeze(0), bits, block_k, shape)
    return QuantizedActivations(
        codes=codes[0], scale=scale[0], code_sum=code_sum[0], in_features=x2d.shape[1]
    )


def quantize_activations_shared(
    x2d: torch.Tensor, clips: torch.Tensor, bits: int, block_k: int
) -> QuantizedActivations:
    """``quantize_activations`` of one x for C clip tables at once (q, k and v read the same
    input): per-row factors ``clips`` [C, M, 2]; x is read once, its extremes measured once.

    Returns codes [C, M, K_pad], scale [C, M] and code_sum [C, M]: slice c equals
    ``quantize_activations(x2d, clips[c], …)`` exactly (the same expressions per table).
    """
    check_bits(bits, "activation bits")
    if x2d.ndim != 2 or clips.ndim != 3 or tuple(clips.shape[1:]) != (x2d.shape[0], 2):
        raise ValueError(
            f"clips must be [C, {x2d.shape[0]}, 2] for x {tuple(x2d.shape)}, "
            f"got {tuple(clips.shape)}"
        )
    codes, scale, code_sum = _quantize_op(x2d, clips, bits, block_k, None)
    return QuantizedActivations(codes, scale, code_sum, in_features=x2d.shape[1])


@torch.library.custom_op("qvgen::quantize_activations", mutates_args=())
def _quantize_op(
    x2d: torch.Tensor, clip: torch.Tensor, bits: int, block_k: int, launch: list[int] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [C, M, K_pad], s_x [C, M], Σ c_x [C, M]) for clip factors [C, M, 2];
    ``launch`` is [block_m, chunk, warps] or None (``default_launch``)."""
    m, k = x2d.shape
    tables = clip.shape[0]
    x2d = x2d if x2d.stride(1) == 1 else x2d.contiguous()
    clip = clip.to(device=x2d.device, dtype=torch.float32)
    if clip.stride(2) != 1:  # a stride-0 row view (one group for all rows) is read as it is
        clip = clip.contiguous()
    k_pad = padded_width(k, block_k)
    codes = torch.empty((tables, m, k_pad), dtype=torch.int8, device=x2d.device)
    scale = torch.empty((tables, m), dtype=torch.float32, device=x2d.device)
    code_sum = torch.empty((tables, m), dtype=torch.int32, device=x2d.device)
    if m:
        if launch is None:
            shape = interpreter_launch(k_pad, m) if interpreting() else default_launch(k_pad, m)
        else:
            shape = QuantLaunch(*launch)
        _quantize_tokens_kernel[(triton.cdiv(m, shape.block_m),)](
            x2d, clip, codes, scale, code_sum,
            m, k, k_pad,
            x2d.stride(0), clip.stride(0), clip.stride(1), codes.stride(0), codes.stride(1),
            LEVELS=qmax(bits), EPSILON=EPS, BLOCK_M=shape.block_m, CHUNK=shape.chunk,
            ONE_CHUNK=shape.chunk >= k_pad, NUM_CLIPS=tables, num_warps=shape.num_warps,
        )  # fmt: skip
    return codes, scale, code_sum


@_quantize_op.register_fake
def _quantize_fake(
    x2d: torch.Tensor, clip: torch.Tensor, bits: int, block_k: int, launch: list[int] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, k = x2d.shape
    tables = clip.shape[0]
    return (
        x2d.new_empty((tables, m, padded_width(k, block_k)), dtype=torch.int8),
        x2d.new_empty((tables, m), dtype=torch.float32),
        x2d.new_empty((tables, m), dtype=torch.int32),
    )
