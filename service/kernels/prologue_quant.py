"""Activation quantization fused into the op that produces the activation: a norm, or a GELU.

Each kernel reads the producer's input once and writes what the low-bit GEMM reads — centred
int8 codes, s_x and Σ_k c_x per clip table (``activation_quant.QuantizedActivations``) — so the
activation itself never goes to memory. Two producers, those of a Wan block
(``service/kernels/wan_block_prologues.py``):

* **norm + modulation** (the inputs of self-attention, cross-attention and FFN-up)::

      μ = mean_k x,   σ² = mean_k (x − μ)²                     (float32; biased, as LayerNorm)
      n = (x − μ) · 1/√(σ² + ε)  [· w + b]
      a = RN_dtype(n · (1 + scale) + shift)                    (scale, shift: float32 per sample
                                                                or per token; optional)

* **GELU (tanh)** (the input of FFN-down)::

      u = √(2/π) · (h + 0.044715 · h³),   a = RN_dtype(h · σ(2u))      (= ½h(1 + tanh u))

  h · σ(2u) = h / (1 + e^(−2u)) is the tanh form without its cancellation for h ≪ 0.

RN_dtype rounds to the source's dtype (bf16, fp16 or fp32), as diffusers' ``type_as`` does, and
then **a is quantized exactly as ``qvgen.numerics.quantize_tokens`` quantizes it** (the same
``qvgen.triton_numerics.token_scale_zero`` and ``activation_quant._centred_codes``). The kernels
run with ``enable_fp_fusion=False`` so that n · (1 + scale) and + shift round separately, as the
unfused float32 ops do.

How close a is to the unfused activation a_ref (diffusers' ops on the same x): the float32 norm
sums in another order and the exponential is not PyTorch's tanh, so before rounding to the
dtype the two differ by a few float32 ulps (relative ~1e-6, up to 2^-19·|h| in GELU's tail);
after rounding they are equal except where that difference straddles a rounding boundary,
where they differ by one ulp of the dtype. Tests check |a − a_ref| ≤ ulp_dtype + 2^-18 · (row
scale); where a = a_ref the codes, scales and sums are exactly the unfused layer's.

Blocking: whole rows in registers (one read of x) unless the row is long, then chunks read
twice or three times, the re-reads from L2 (as ``activation_quant``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qvgen.numerics import EPS, check_bits, qmax
from qvgen.triton_numerics import token_scale_zero
from qvgen.triton_support import interpreting
from service.kernels.activation_quant import (
    QuantizedActivations,
    QuantLaunch,
    _centred_codes,
    default_launch,
    interpreter_launch,
)
from service.kernels.weight_layout import MAX_KERNEL_BITS, padded_width

# Rows up to this power-of-two width stay in registers in the norm kernel: its per-element work
# (centring, scaling, modulation) makes a second and third read dearer than idle lanes.
# Wan's widths 1536 (1.3B) and 5120 (14B) both qualify; prediction, to be measured on the GPU.
_NORM_ONE_PASS_MAX = 16384
# Elements of x per program in one-pass mode (several short rows per program).
_ONE_PASS_ELEMENTS = 2048
_CHUNK_MAX = 1024
_ROW_ELEMENTS = 10240


@triton.jit
def _table(clip_ptr, rows, stride_clip_m, row_ok, a_min, a_max, LEVELS, EPSILON, BLOCK_M):
    """(s_x, z_x, RN(1 / s_x), 2^b − 1) of one clip table for a block of rows."""
    _, _, _, scale, zero = token_scale_zero(
        clip_ptr, rows, stride_clip_m, row_ok, a_min, a_max, LEVELS, EPSILON, BLOCK_M
    )
    recip = tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32), scale)
    return scale, zero, recip, tl.full([BLOCK_M], LEVELS, tl.float32)


@triton.jit
def _round_to(v, out_dtype: tl.constexpr):  # type: ignore[no-untyped-def]  # typed at launch
    """RN_dtype(v) as float32: round to nearest, ties to even, as PyTorch's ``.to(dtype)``.

    For bf16 by integer arithmetic on the bits (add 0x7FFF plus the kept part's lowest bit,
    clear the low half): the same on the GPU and in Triton's interpreter, whose own fp32 → bf16
    cast truncates.
    """
    if out_dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    elif out_dtype == tl.float16:
        return v.to(tl.float16).to(tl.float32)
    else:
        return v


@triton.jit
def _normed(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    x, mean, rstd, cols, mask, mod_rows,
    w_ptr, b_ptr, shift_ptr, mscale_ptr, K,
    DTYPE: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_MODULATION: tl.constexpr,
):  # fmt: skip
    """a = RN_dtype(LN(x) [· w + b] · (1 + scale) + shift) of a tile, 0 outside ``mask``."""
    n = tl.where(mask, x - mean[:, None], 0.0) * rstd[:, None]
    col_ok = cols < K
    if HAS_WEIGHT:
        n = n * tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        n = n + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_MODULATION:
        offsets = mod_rows[:, None] + cols[None, :]
        scale = tl.load(mscale_ptr + offsets, mask=mask, other=0.0)
        shift = tl.load(shift_ptr + offsets, mask=mask, other=0.0)
        n = n * (1.0 + scale) + shift
    return tl.where(mask, _round_to(n, DTYPE), 0.0)


@triton.jit
def _gelu(h, mask, DTYPE: tl.constexpr):  # type: ignore[no-untyped-def]  # typed at launch
    """a = RN_dtype(h · σ(2u)), u = √(2/π)(h + κh³), of a tile, 0 outside ``mask``; √(2/π) and
    κ = 0.044715 as PyTorch's GELU(approximate="tanh") writes them."""
    inner = 0.7978845608028654 * (h + 0.044715 * (h * h * h))
    # e^88 is the largest power below float32's maximum: the quotient stays finite, not −0.
    g = tl.math.div_rn(h, 1.0 + tl.exp(tl.minimum(-2.0 * inner, 88.0)))
    return tl.where(mask, _round_to(g, DTYPE), 0.0)


@triton.jit
def _norm_quant_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    # pointers
    x_ptr, w_ptr, b_ptr, shift_ptr, mscale_ptr, clip_ptr,
    codes_ptr, scale_ptr, sum_ptr, act_ptr,
    # sizes
    M, K, K_PAD, ROWS_PER_SAMPLE, eps,
    # strides
    stride_xm, stride_mod_b, stride_mod_s, stride_clip_c, stride_clip_m,
    stride_codes_c, stride_codes_m, stride_act_m,
    # meta-parameters
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MODULATION: tl.constexpr,
    STORE_ACTIVATION: tl.constexpr, LEVELS: tl.constexpr, EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, ONE_CHUNK: tl.constexpr,
    NUM_CLIPS: tl.constexpr,
):  # fmt: skip
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, CHUNK)
    row_ok = rows < M
    x_rows = x_ptr + rows[:, None] * stride_xm
    code_rows = codes_ptr + rows[:, None] * stride_codes_m
    act_rows = act_ptr + rows[:, None] * stride_act_m
    # Modulation rows: sample = row // S, token = row % S (stride_mod_s = 0: one per sample).
    mod_rows = (rows // ROWS_PER_SAMPLE) * stride_mod_b + (rows % ROWS_PER_SAMPLE) * stride_mod_s
    k_count = tl.zeros([BLOCK_M], tl.float32) + K
    if ONE_CHUNK:
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.math.div_rn(tl.sum(x, axis=1), k_count)
        centred = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.math.div_rn(tl.sum(centred * centred, axis=1), k_count)
        rstd = tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32), tl.math.sqrt_rn(var + eps))
        a = _normed(
            x, mean, rstd, cols, mask, mod_rows, w_ptr, b_ptr, shift_ptr, mscale_ptr, K,
            DTYPE, HAS_WEIGHT, HAS_BIAS, HAS_MODULATION,
        )  # fmt: skip
        if STORE_ACTIVATION:
            tl.store(act_rows + cols[None, :], a.to(DTYPE), mask=mask)
        a_min = tl.min(a, axis=1)
        a_max = tl.max(a, axis=1)
        for c in tl.static_range(NUM_CLIPS):
            scale, zero, recip, levels = _table(
                clip_ptr + c * stride_clip_c, rows, stride_clip_m, row_ok, a_min, a_max,
                LEVELS, EPSILON, BLOCK_M,
            )  # fmt: skip
            codes = _centred_codes(a, scale, recip, zero, levels)
            store_ok = row_ok[:, None] & (cols[None, :] < K_PAD)
            tl.store(code_rows + c * stride_codes_c + cols[None, :], codes.to(tl.int8), store_ok)
            tl.store(scale_ptr + c * M + rows, scale, mask=row_ok)
            tl.store(sum_ptr + c * M + rows, tl.sum(codes, axis=1), mask=row_ok)
    else:
        # Mean and variance chunk by chunk, each chunk's (mean, Σ(x − mean)²) merged into the
        # running pair (Chan, Golub and LeVeque): no E[x²] − μ² cancellation for large |μ|.
        mean = tl.zeros([BLOCK_M], tl.float32)
        m2 = tl.zeros([BLOCK_M], tl.float32)
        count = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, K, CHUNK):
            mask = row_ok[:, None] & (k0 + cols[None, :] < K)
            xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            n_b = tl.zeros([BLOCK_M], tl.float32) + tl.minimum(K - k0, CHUNK)
            mean_b = tl.math.div_rn(tl.sum(xc, axis=1), n_b)
            d = tl.where(mask, xc - mean_b[:, None], 0.0)
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * tl.math.div_rn(n_b, total)
            m2 = m2 + tl.sum(d * d, axis=1) + delta * delta * tl.math.div_rn(count * n_b, total)
            count = total
        var = tl.math.div_rn(m2, k_count)
        rstd = tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32), tl.math.sqrt_rn(var + eps))
        run_min = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
        run_max = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
        for k0 in range(0, K, CHUNK):
            mask = row_ok[:, None] & (k0 + cols[None, :] < K)
            xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            a = _normed(
                xc, mean, rstd, k0 + cols, mask, mod_rows, w_ptr, b_ptr, shift_ptr, mscale_ptr,
                K, DTYPE, HAS_WEIGHT, HAS_BIAS, HAS_MODULATION,
            )  # fmt: skip
            if STORE_ACTIVATION:
                tl.store(act_rows + k0 + cols[None, :], a.to(DTYPE), mask=mask)
            run_min = tl.minimum(run_min, a)
            run_max = tl.maximum(run_max, a)
        a_min = tl.min(run_min, axis=1)
        a_max = tl.max(run_max, axis=1)
        for c in tl.static_range(NUM_CLIPS):
            scale, zero, recip, levels = _table(
                clip_ptr + c * stride_clip_c, rows, stride_clip_m, row_ok, a_min, a_max,
                LEVELS, EPSILON, BLOCK_M,
            )  # fmt: skip
            sums = tl.zeros([BLOCK_M, CHUNK], dtype=tl.int32)
            for k0 in range(0, K_PAD, CHUNK):
                # The same expressions as above, so the same a; past K it is 0 (code 0).
                mask = row_ok[:, None] & (k0 + cols[None, :] < K)
                xc = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                a = _normed(
                    xc, mean, rstd, k0 + cols, mask, mod_rows, w_ptr, b_ptr, shift_ptr,
                    mscale_ptr, K, DTYPE, HAS_WEIGHT, HAS_BIAS, HAS_MODULATION,
                )  # fmt: skip
                codes = _centred_codes(a, scale, recip, zero, levels)
                store_ok = row_ok[:, None] & (k0 + cols[None, :] < K_PAD)
                tl.store(
                    code_rows + c * stride_codes_c + k0 + cols[None, :], codes.to(tl.int8), store_ok
                )
                sums += codes
            tl.store(scale_ptr + c * M + rows, scale, mask=row_ok)
            tl.store(sum_ptr + c * M + rows, tl.sum(sums, axis=1), mask=row_ok)


@triton.jit
def _gelu_quant_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    # pointers
    h_ptr, clip_ptr, codes_ptr, scale_ptr, sum_ptr, act_ptr,
    # sizes
    M, K, K_PAD,
    # strides
    stride_hm, stride_clip_c, stride_clip_m, stride_codes_c, stride_codes_m, stride_act_m,
    # meta-parameters
    STORE_ACTIVATION: tl.constexpr, LEVELS: tl.constexpr, EPSILON: tl.constexpr,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, ONE_CHUNK: tl.constexpr,
    NUM_CLIPS: tl.constexpr,
):  # fmt: skip
    DTYPE: tl.constexpr = h_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, CHUNK)
    row_ok = rows < M
    h_rows = h_ptr + rows[:, None] * stride_hm
    code_rows = codes_ptr + rows[:, None] * stride_codes_m
    act_rows = act_ptr + rows[:, None] * stride_act_m
    if ONE_CHUNK:
        mask = row_ok[:, None] & (cols[None, :] < K)
        h = tl.load(h_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        a = _gelu(h, mask, DTYPE)
        if STORE_ACTIVATION:
            tl.store(act_rows + cols[None, :], a.to(DTYPE), mask=mask)
        a_min = tl.min(a, axis=1)
        a_max = tl.max(a, axis=1)
        for c in tl.static_range(NUM_CLIPS):
            scale, zero, recip, levels = _table(
                clip_ptr + c * stride_clip_c, rows, stride_clip_m, row_ok, a_min, a_max,
                LEVELS, EPSILON, BLOCK_M,
            )  # fmt: skip
            codes = _centred_codes(a, scale, recip, zero, levels)
            store_ok = row_ok[:, None] & (cols[None, :] < K_PAD)
            tl.store(code_rows + c * stride_codes_c + cols[None, :], codes.to(tl.int8), store_ok)
            tl.store(scale_ptr + c * M + rows, scale, mask=row_ok)
            tl.store(sum_ptr + c * M + rows, tl.sum(codes, axis=1), mask=row_ok)
    else:
        run_min = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
        run_max = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
        for k0 in range(0, K, CHUNK):
            mask = row_ok[:, None] & (k0 + cols[None, :] < K)
            h = tl.load(h_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            a = _gelu(h, mask, DTYPE)
            if STORE_ACTIVATION:
                tl.store(act_rows + k0 + cols[None, :], a.to(DTYPE), mask=mask)
            run_min = tl.minimum(run_min, a)
            run_max = tl.maximum(run_max, a)
        a_min = tl.min(run_min, axis=1)
        a_max = tl.max(run_max, axis=1)
        for c in tl.static_range(NUM_CLIPS):
            scale, zero, recip, levels = _table(
                clip_ptr + c * stride_clip_c, rows, stride_clip_m, row_ok, a_min, a_max,
                LEVELS, EPSILON, BLOCK_M,
            )  # fmt: skip
            sums = tl.zeros([BLOCK_M, CHUNK], dtype=tl.int32)
            for k0 in range(0, K_PAD, CHUNK):
                mask = row_ok[:, None] & (k0 + cols[None, :] < K)
                h = tl.load(h_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                codes = _centred_codes(_gelu(h, mask, DTYPE), scale, recip, zero, levels)
                store_ok = row_ok[:, None] & (k0 + cols[None, :] < K_PAD)
                tl.store(
                    code_rows + c * stride_codes_c + k0 + cols[None, :], codes.to(tl.int8), store_ok
                )
                sums += codes
            tl.store(scale_ptr + c * M + rows, scale, mask=row_ok)
            tl.store(sum_ptr + c * M + rows, tl.sum(sums, axis=1), mask=row_ok)


def norm_launch(k_pad: int, tokens: int) -> QuantLaunch:
    """Whole rows in registers up to ``_NORM_ONE_PASS_MAX`` wide, else chunks dividing K_pad."""
    if interpreting():
        return interpreter_launch(k_pad, tokens)
    full = triton.next_power_of_2(k_pad)
    row_cap = _pow2_floor(max(1, tokens // 264))  # ≥ ~2 programs per SM of an H100/H200
    if full <= _NORM_ONE_PASS_MAX:
        rows = min(row_cap, _pow2_floor(max(1, _ONE_PASS_ELEMENTS // full)))
        # Built for sm_90 (tests/service/kernels/hopper_build.py), an 8192-wide row needs 76–101
        # registers a thread at 16 warps (16 warps resident per SM) but 128–153 at 8 (8 warps).
        warps = 4 if full <= 2048 else 8 if full <= 4096 else 16
        return QuantLaunch(block_m=rows, chunk=full, num_warps=warps)
    chunk = min(_CHUNK_MAX, k_pad & -k_pad)
    rows = min(row_cap, _pow2_floor(max(1, _ROW_ELEMENTS // k_pad)))
    return QuantLaunch(block_m=rows, chunk=chunk, num_warps=4)


def gelu_launch(k_pad: int, tokens: int) -> QuantLaunch:
    """The plain quantizer's choice (``activation_quant.default_launch``: GELU adds a few
    instructions per element to the same access pattern), with 16 warps for rows of 16 384
    in registers: compiled for sm_90 the kernel then needs 128 registers a thread, two programs
    per SM, against 223 and one program at 8 warps (cuobjdump; to be timed on the GPU)."""
    if interpreting():
        return interpreter_launch(k_pad, tokens)
    launch = default_launch(k_pad, tokens)
    if launch.chunk >= 16384 and launch.chunk >= k_pad:
        return QuantLaunch(block_m=launch.block_m, chunk=launch.chunk, num_warps=16)
    return launch


def _pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1)


def _check_common(x2d: torch.Tensor, clips: torch.Tensor, bits: int, what: str) -> None:
    check_bits(bits, "activation bits")
    if bits > MAX_KERNEL_BITS:
        raise ValueError(f"activation bits must be ≤ {MAX_KERNEL_BITS} for int8 codes, got {bits}")
    if x2d.ndim != 2 or x2d.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(
            f"{what} must be a 2-D bf16/fp16/fp32 tensor, got {x2d.dtype} {tuple(x2d.shape)}"
        )
    if clips.ndim != 3 or tuple(clips.shape[1:]) != (x2d.shape[0], 2):
        raise ValueError(
            f"clips must be [C, {x2d.shape[0]}, 2] for {what} {tuple(x2d.shape)}, "
            f"got {tuple(clips.shape)}"
        )


def _check_modulation(
    x2d: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor | None
) -> None:
    if (shift is None) != (scale is None):
        raise ValueError("modulation needs both shift and scale, or neither")
    if shift is None or scale is None:
        return
    m, k = x2d.shape
    for name, t in (("shift", shift), ("scale", scale)):
        if (
            t.ndim != 3
            or t.shape[-1] != k
            or m % t.shape[0]
            or t.shape[1] not in (1, m // t.shape[0])
        ):
            raise ValueError(
                f"{name} must be [B, 1, {k}] or [B, S, {k}] with B·S = {m} rows, "
                f"got {tuple(t.shape)}"
            )
    if shift.shape != scale.shape:
        raise ValueError(f"shift {tuple(shift.shape)} and scale {tuple(scale.shape)} differ")


def norm_modulation_quantize(
    x2d: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    clips: torch.Tensor,
    bits: int,
    block_k: int,
    launch: QuantLaunch | None = None,
    store_activation: bool = False,
) -> tuple[QuantizedActivations, torch.Tensor | None]:
    """LayerNorm (+ affine) (+ modulation) of x [M, K], rounded to x's dtype, quantized per token
    for each of C clip tables ``clips`` [C, M, 2] (module docstring).

    ``weight`` / ``bias``: the norm's [K] (or None); ``shift`` / ``scale``: float32 [B, 1, K]
    (per sample) or [B, S, K] (per token) with B·S = M, or both None. Returns codes [C, M, K_pad],
    s_x [C, M], Σ c_x [C, M], and the activation a [M, K] when ``store_activation`` (for checks),
    else None. Runs as the custom operator ``qvgen::norm_modulation_quantize``.
    """
    _check_common(x2d, clips, bits, "x")
    _check_modulation(x2d, shift, scale)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (x2d.shape[1],):
            raise ValueError(f"norm {name} must be [{x2d.shape[1]}], got {tuple(t.shape)}")
    shape = None if launch is None else [launch.block_m, launch.chunk, launch.num_warps]
    codes, s_x, sums, act = _norm_quant_op(
        x2d, weight, bias, float(eps), shift, scale, clips, bits, block_k, shape, store_activation
    )
    qa = QuantizedActivations(codes, s_x, sums, in_features=x2d.shape[1])
    return qa, act if store_activation else None


def gelu_quantize(
    h2d: torch.Tensor,
    clips: torch.Tensor,
    bits: int,
    block_k: int,
    launch: QuantLaunch | None = None,
    store_activation: bool = False,
) -> tuple[QuantizedActivations, torch.Tensor | None]:
    """GELU (tanh) of h [M, K], rounded to h's dtype, quantized per token for each clip table
    ``clips`` [C, M, 2]; like ``norm_modulation_quantize`` otherwise. Runs as the custom
    operator ``qvgen::gelu_quantize``."""
    _check_common(h2d, clips, bits, "h")
    shape = None if launch is None else [launch.block_m, launch.chunk, launch.num_warps]
    codes, s_x, sums, act = _gelu_quant_op(h2d, clips, bits, block_k, shape, store_activation)
    qa = QuantizedActivations(codes, s_x, sums, in_features=h2d.shape[1])
    return qa, act if store_activation else None


def _outputs(
    x2d: torch.Tensor, tables: int, k_pad: int, store_activation: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    m, k = x2d.shape
    return (
        x2d.new_empty((tables, m, k_pad), dtype=torch.int8),
        x2d.new_empty((tables, m), dtype=torch.float32),
        x2d.new_empty((tables, m), dtype=torch.int32),
        x2d.new_empty((m if store_activation else 0, k)),
    )


def _clip_operand(clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    clips = clips.to(device=device, dtype=torch.float32)
    # A stride-0 row view (one group for all rows) is read as it is.
    return clips if clips.stride(2) == 1 else clips.contiguous()


@torch.library.custom_op("qvgen::norm_modulation_quantize", mutates_args=())
def _norm_quant_op(
    x2d: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    clips: torch.Tensor,
    bits: int,
    block_k: int,
    launch: list[int] | None,
    store_activation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [C, M, K_pad], s_x [C, M], Σ c_x [C, M], a [M or 0, K]); see
    ``norm_modulation_quantize``. ``launch`` is [block_m, chunk, warps] or None."""
    m, k = x2d.shape
    x2d = x2d if x2d.stride(1) == 1 else x2d.contiguous()
    clips = _clip_operand(clips, x2d.device)
    k_pad = padded_width(k, block_k)
    codes, s_x, sums, act = _outputs(x2d, clips.shape[0], k_pad, store_activation)
    if m == 0:
        return codes, s_x, sums, act
    has_mod = shift is not None and scale is not None
    if shift is not None and scale is not None:
        # Both contiguous [B, 1 | S, K] of one shape, so they share their strides.
        shift, scale = shift.float().contiguous(), scale.float().contiguous()
        samples, per = shift.shape[0], shift.shape[1]
        mod_strides = (shift.stride(0), 0 if per == 1 else shift.stride(1))
        rows_per_sample = m // samples
    else:
        mod_strides, rows_per_sample = (0, 0), m
    shape = norm_launch(k_pad, m) if launch is None else QuantLaunch(*launch)
    dummy = s_x  # an unread pointer for the operands that are absent
    _norm_quant_kernel[(triton.cdiv(m, shape.block_m),)](
        x2d, dummy if weight is None else weight, dummy if bias is None else bias,
        shift if has_mod else dummy, scale if has_mod else dummy, clips,
        codes, s_x, sums, act if store_activation else dummy,
        m, k, k_pad, rows_per_sample, eps,
        x2d.stride(0), *mod_strides, clips.stride(0), clips.stride(1),
        codes.stride(0), codes.stride(1), act.stride(0) if store_activation else 0,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_MODULATION=has_mod,
        STORE_ACTIVATION=store_activation, LEVELS=qmax(bits), EPSILON=EPS,
        BLOCK_M=shape.block_m, CHUNK=shape.chunk, ONE_CHUNK=shape.chunk >= k_pad,
        NUM_CLIPS=clips.shape[0], num_warps=shape.num_warps, enable_fp_fusion=False,
    )  # fmt: skip
    return codes, s_x, sums, act


@_norm_quant_op.register_fake
def _norm_quant_fake(
    x2d: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    clips: torch.Tensor,
    bits: int,
    block_k: int,
    launch: list[int] | None,
    store_activation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _outputs(x2d, clips.shape[0], padded_width(x2d.shape[1], block_k), store_activation)


@torch.library.custom_op("qvgen::gelu_quantize", mutates_args=())
def _gelu_quant_op(
    h2d: torch.Tensor,
    clips: torch.Tensor,
    bits: int,
    block_k: int,
    launch: list[int] | None,
    store_activation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [C, M, K_pad], s_x [C, M], Σ c_x [C, M], a [M or 0, K]); see ``gelu_quantize``."""
    m, k = h2d.shape
    h2d = h2d if h2d.stride(1) == 1 else h2d.contiguous()
    clips = _clip_operand(clips, h2d.device)
    k_pad = padded_width(k, block_k)
    codes, s_x, sums, act = _outputs(h2d, clips.shape[0], k_pad, store_activation)
    if m == 0:
        return codes, s_x, sums, act
    shape = gelu_launch(k_pad, m) if launch is None else QuantLaunch(*launch)
    _gelu_quant_kernel[(triton.cdiv(m, shape.block_m),)](
        h2d, clips, codes, s_x, sums, act if store_activation else s_x,
        m, k, k_pad,
        h2d.stride(0), clips.stride(0), clips.stride(1), codes.stride(0), codes.stride(1),
        act.stride(0) if store_activation else 0,
        STORE_ACTIVATION=store_activation, LEVELS=qmax(bits), EPSILON=EPS,
        BLOCK_M=shape.block_m, CHUNK=shape.chunk, ONE_CHUNK=shape.chunk >= k_pad,
        NUM_CLIPS=clips.shape[0], num_warps=shape.num_warps, enable_fp_fusion=False,
    )  # fmt: skip
    return codes, s_x, sums, act


@_gelu_quant_op.register_fake
def _gelu_quant_fake(
    h2d: torch.Tensor,
    clips: torch.Tensor,
    bits: int,
    block_k: int,
    launch: list[int] | None,
    store_activation: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _outputs(h2d, clips.shape[0], padded_width(h2d.shape[1], block_k), store_activation)
