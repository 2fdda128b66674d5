"""8-bit self-attention in the spirit of SageAttention 2: INT8 Q·Kᵀ, FP8 P·V, fp32 softmax.

For q, k, v [B, S, H, D] (bf16 or fp16), per (sample, head)::

    k̃ = k − mean_s(k)                       (K smoothing: softmax(q·k̃ᵀ) = softmax(q·kᵀ), since
                                              q·mean(k)ᵀ is the same for every key of a query)
    q_c = round(q / s_q)   s_q = max|q| / 127 per block of BLOCK_M queries      (int8)
    k_c = round(k̃ / s_k)   s_k = max|k̃| / 127 per block of BLOCK_N keys         (int8)
    v_c = e4m3(v / s_v)     s_v = max_s |v| / 448 per channel                    (fp8)
    s   = (q_c · k_cᵀ) · s_q s_k / √D               int32 dot, exact; then fp32
    online softmax over key blocks in fp32 (running max m, running sum l)
    o   = Σ_blocks e4m3(448 · p) · v_c  ·  s_v / (448 · l)

Each key block's P·V is a fresh FP8 dot with fp32 output, added to the fp32 accumulator
outside the dot (two-level accumulation: Hopper's FP8 tensor cores keep fewer accumulator
bits). Smoothing K removes the channel offsets that dominate max|k| (one per head in
diffusion transformers), so the int8 grid spends its levels on what varies across keys. Where
FP8 dots are missing (sm_8x) P·V runs in fp16.

Error against float64 on Gaussian inputs (measured in Triton's interpreter): int8 Q·Kᵀ alone
‖Δ‖/‖o‖ ≈ 1.1 % (bf16 SDPA: 0.2 %); with the e4m3 P·V ≈ 4.7 % — e4m3 keeps 3 mantissa bits
of P and of V, ~2 % each. ``BOUNDS`` is what the tests hold each path to; whether that costs
image quality is for the benchmark and an evaluation to say, which is why the kernel is off by
default and chosen per model.

``int8_attention`` falls back to SDPA (one log line per reason) for a head dim or dtype the
kernel does not take, or where Triton cannot run.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.nn import functional as F

from qvgen.triton_support import interpreting, triton_unavailable_reason

logger = logging.getLogger(__name__)

# 32: qvgen-tiny's heads (4 × 32), so its evaluation can measure what the kernel costs; 64, 128:
# Wan 2.1's and CogVideoX's. The int8 dot's reduction and the FP8 dot's width take all three.
HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.bfloat16, torch.float16)
# (‖o − o_ref‖ / ‖o_ref‖, cosine) the tests allow against a float64 reference (Gaussian q, k,
# v), for P·V in e4m3 and in fp16.
BOUNDS = {True: (0.06, 0.998), False: (0.02, 0.9997)}
E4M3_MAX = 448.0


@dataclass(frozen=True)
class AttentionTiles:
    """One program's tile: ``block_m`` queries against key blocks of ``block_n``. The blocks are
    also the quantization granularity (one int8 scale per block of q and of k), so the operands
    are quantized for the tiles that will read them."""

    block_m: int = 64
    block_n: int = 128
    num_warps: int = 4
    num_stages: int = 3

    def label(self) -> str:
        return f"{self.block_m}×{self.block_n} w{self.num_warps} s{self.num_stages}"


# The fastest of `python -m benchmarks.attention`'s sweep on an H200 (kernel alone, 32 760
# tokens, head dim 128: 608 TFLOPS at 12 heads, 586 at 40; the 128×64, 8-warp tiles: 485 / 495).
TILES = AttentionTiles()
INTERPRETER_TILES = AttentionTiles(block_m=32, block_n=16, num_warps=4, num_stages=1)
_LOG2E = 1.4426950408889634


@triton.jit
def _attention_kernel(  # type: ignore[no-untyped-def]  # Triton types the arguments at launch
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    q_scale_ptr,
    k_scale_ptr,
    v_scale_ptr,
    o_ptr,
    # sizes
    M,
    N,
    H,
    Q_BLOCKS,
    K_BLOCKS,
    # strides
    stride_q_bh,
    stride_q_m,
    stride_k_bh,
    stride_k_n,
    stride_v_bh,
    stride_v_d,
    stride_o_b,
    stride_o_m,
    stride_o_h,
    # meta-parameters
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PV_FP8: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + bh * stride_q_bh + offs_m[:, None] * stride_q_m + offs_d[None, :])
    # s_q · s_k / √D · log2(e) is split as: q's part here (with 1/√D · log2 e), k's per block.
    q_scale = tl.load(q_scale_ptr + bh * Q_BLOCKS + pid_m)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    k_ptrs = k_ptr + bh * stride_k_bh + offs_n[:, None] * stride_k_n + offs_d[None, :]
    # V is stored transposed ([D, N]): the P·V dot's right operand is then K-major, which the
    # 8-bit tensor-core path wants.
    v_ptrs = v_ptr + bh * stride_v_bh + offs_d[:, None] * stride_v_d + offs_n[None, :]
    for block in range(0, K_BLOCKS):
        start = block * BLOCK_N
        k = tl.load(k_ptrs + start * stride_k_n)
        s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)
        s = s * (q_scale * tl.load(k_scale_ptr + bh * K_BLOCKS + block))
        s = tl.where((start + offs_n)[None, :] < N, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_t = tl.load(v_ptrs + start)
        if PV_FP8:
            pv = tl.dot((p * 448.0).to(tl.float8e4nv), tl.trans(v_t), out_dtype=tl.float32)
        else:
            pv = tl.dot(p.to(tl.float16), tl.trans(v_t), out_dtype=tl.float32)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    v_scale = tl.load(v_scale_ptr + bh * D + offs_d)
    out = acc / l_i[:, None] * v_scale[None, :]
    b = bh // H
    h = bh % H
    o_ptrs = (
        o_ptr + b * stride_o_b + h * stride_o_h + offs_m[:, None] * stride_o_m + offs_d[None, :]
    )
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < M)


def default_tiles() -> AttentionTiles:
    return INTERPRETER_TILES if interpreting() else TILES


def _per_block_int8(
    x: torch.Tensor, block: int, extra_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, S, H, D] → int8 codes [B·H, S_pad, D] and scales [B·H, S_pad / block] (times
    ``extra_scale``), one scale per block of ``block`` tokens of a head; padding rows are 0."""
    b, s, h, d = x.shape
    pad = -s % block
    xt = F.pad(x.float().permute(0, 2, 1, 3), (0, 0, 0, pad)).reshape(b * h, -1, block, d)
    scale = (xt.abs().amax(dim=(2, 3)) / 127.0).clamp(min=1e-12)
    codes = torch.round(xt / scale[:, :, None, None]).to(torch.int8).reshape(b * h, -1, d)
    return codes, scale * extra_scale


def _fp8_available(device: torch.device) -> bool:
    if interpreting() or device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv_fp8: bool, tiles: AttentionTiles
) -> tuple[torch.Tensor, ...]:
    """The kernel's operands (module docstring) for ``tiles``: plain PyTorch, so a compiled
    graph fuses it into the ops that produce q, k and v."""
    block_m, block_n = tiles.block_m, tiles.block_n
    d = q.shape[-1]
    q_codes, q_scale = _per_block_int8(q, block_m, _LOG2E / d**0.5)
    k_smooth = k.float() - k.float().mean(dim=1, keepdim=True)
    k_codes, k_scale = _per_block_int8(k_smooth, block_n, 1.0)
    b, n, h, _ = v.shape
    vt = F.pad(v.float().permute(0, 2, 3, 1), (0, -n % block_n)).reshape(b * h, d, -1)
    if pv_fp8:
        v_scale = (vt.abs().amax(dim=2) / E4M3_MAX).clamp(min=1e-12)
        v_codes = (vt / v_scale[:, :, None]).to(torch.float8_e4m3fn)
        v_scale = v_scale / E4M3_MAX  # undoes the 448 that P is scaled by
    else:
        v_codes = vt.to(torch.float16)
        v_scale = torch.ones(b * h, d, device=v.device)
    return q_codes, k_codes, v_codes.contiguous(), q_scale, k_scale, v_scale


@torch.library.custom_op("qvgen::attention_int8", mutates_args=())
def _attention_op(
    q_codes: torch.Tensor,
    k_codes: torch.Tensor,
    v_codes: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    m: int,
    n: int,
    heads: int,
    out_dtype: torch.dtype,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    """o [B, M, H, D] from the operands of ``quantize_inputs`` for the same tiles."""
    bh, _, d = q_codes.shape
    out = torch.empty((bh // heads, m, heads, d), dtype=out_dtype, device=q_codes.device)
    grid = (triton.cdiv(m, block_m), bh)
    _attention_kernel[grid](
        q_codes, k_codes, v_codes, q_scale, k_scale, v_scale, out,
        m, n, heads, q_scale.shape[1], k_scale.shape[1],
        q_codes.stride(0), q_codes.stride(1), k_codes.stride(0), k_codes.stride(1),
        v_codes.stride(0), v_codes.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        D=d, BLOCK_M=block_m, BLOCK_N=block_n, PV_FP8=v_codes.dtype == torch.float8_e4m3fn,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


@_attention_op.register_fake
def _attention_fake(
    q_codes: torch.Tensor,
    k_codes: torch.Tensor,
    v_codes: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    m: int,
    n: int,
    heads: int,
    out_dtype: torch.dtype,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    bh, _, d = q_codes.shape
    return q_codes.new_empty((bh // heads, m, heads, d), dtype=out_dtype)


@torch._dynamo.assume_constant_result
def _device_plan(device_type: str, index: int) -> tuple[str | None, bool]:
    """(why Triton cannot run on the device, whether P·V runs in FP8 there) for device
    ``device_type``:``index`` (index −1: none). Host facts that torch.compile takes as
    constants of the graph rather than tracing the import probe and the capability query
    behind them (dynamo 2.11 refuses to trace ``importlib.util.find_spec``, which broke the
    compiled graph at every attention call on an H200)."""
    device = torch.device(device_type, index) if index >= 0 else torch.device(device_type)
    return triton_unavailable_reason(device), _fp8_available(device)


def _plan(q: torch.Tensor) -> tuple[str | None, bool]:
    index = q.device.index
    return _device_plan(q.device.type, -1 if index is None else index)


def input_refusal(q: torch.Tensor) -> str | None:
    """Why the kernel cannot take ``q`` [B, S, H, D] whatever the device; None when it can."""
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} (supported: {HEAD_DIMS})"
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (supported: bf16, fp16)"
    return None


@functools.cache
def _log_fallback(reason: str) -> None:
    logger.warning("8-bit attention: %s; using SDPA", reason)


def run_kernel(
    operands: tuple[torch.Tensor, ...],
    m: int,
    n: int,
    heads: int,
    out_dtype: torch.dtype,
    tiles: AttentionTiles,
) -> torch.Tensor:
    """The kernel on operands that ``quantize_inputs`` made for ``tiles``."""
    return _attention_op(
        *operands, m, n, heads, out_dtype,
        tiles.block_m, tiles.block_n, tiles.num_warps, tiles.num_stages,
    )  # fmt: skip


def int8_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tiles: AttentionTiles | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / √D) v for q [B, M, H, D], k and v [B, N, H, D] (no mask), in q's dtype;
    SDPA where the kernel does not apply (``input_refusal``, or the device: ``_device_plan``).
    ``tiles``: ``default_tiles()`` unless given (the benchmark's sweep)."""
    device_refusal, pv_fp8 = _plan(q)
    reason = input_refusal(q) or device_refusal
    if reason is not None:
        _log_fallback(reason)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return out.transpose(1, 2)
    tiles = tiles or default_tiles()
    operands = quantize_inputs(q, k, v, pv_fp8, tiles)
    return run_kernel(operands, q.shape[1], k.shape[1], q.shape[2], q.dtype, tiles)
