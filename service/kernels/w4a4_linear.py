"""``W4A4Linear``: the quantized linear that serving runs, on a chosen kernel backend.

It holds one layer in format v1 (``qvgen.packed_layer.PackedLinearWeights``) and computes
y = Q_a(x) · Q_w(W)^T + b with the clip factors of the timestep group set by
``qvgen.timestep_groups.bind_timestep_groups``. Despite the name it serves every bit width of
the format (W3A3 included).

The backend is chosen from the device the weights sit on: Triton on CUDA sm_8x / sm_90 (or
anywhere under ``TRITON_INTERPRET=1``), else the reference, announced by one log line. Build the
module from weights already on the serving device.
"""

from __future__ import annotations

import enum

import torch
from torch import nn

from qvgen.packed_layer import PackedLinearWeights
from qvgen.timestep_groups import clip_rows
from qvgen.triton_support import log_fallback_once, triton_unavailable_reason
from service.kernels.reference import quantized_linear_reference
from service.kernels.weight_layout import (
    DEFAULT_BLOCK_K,
    MAX_KERNEL_BITS,
    KernelWeightLayout,
    format_v1_from_kernel_layout,
    to_kernel_layout,
)


class KernelBackend(enum.Enum):
    """Which implementation computes the quantized product."""

    REFERENCE = "reference"  # pure PyTorch, exact integers; any device
    TRITON = "triton"  # fused activation quantization + int8 tensor-core GEMM


def triton_refusal(weights: PackedLinearWeights) -> str | None:
    """Why the Triton backend cannot serve ``weights``; None when it can."""
    if max(weights.weight_bits, weights.activation_bits) > MAX_KERNEL_BITS:
        return (
            f"W{weights.weight_bits}A{weights.activation_bits} needs more than "
            f"{MAX_KERNEL_BITS}-bit int8 codes"
        )
    return triton_unavailable_reason(weights.qweight.device)


def select_backend(weights: PackedLinearWeights) -> KernelBackend:
    """Triton where it runs, else the reference (logged once per reason)."""
    reason = triton_refusal(weights)
    if reason is None:
        return KernelBackend.TRITON
    log_fallback_once(reason)
    return KernelBackend.REFERENCE


class W4A4Linear(nn.Module):
    """A packed low-bit linear layer.

    Buffers: ``weight_scale`` / ``weight_zero_point`` float32 [N], ``act_clip`` float32 [G, 2],
    ``bias`` float32 [N] (when present), and the codes:

    * reference backend: ``qweight`` uint8 [N, ⌈K/2⌉] (format v1) and ``weight_codes`` int8
      [N, K] unpacked once at construction;
    * Triton backend: only ``kernel_qweight``, the codes repacked once into the kernels' layout
      (``service.kernels.weight_layout``: uint8 [N, K_pad/2] split per K-block of
      ``block_k``) — about a quarter of a bf16 weight.
    """

    qweight: torch.Tensor | None
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    act_clip: torch.Tensor
    bias: torch.Tensor | None
    weight_codes: torch.Tensor | None
    kernel_qweight: torch.Tensor | None

    def __init__(
        self,
        weights: PackedLinearWeights,
        backend: KernelBackend | None = None,
        block_k: int = DEFAULT_BLOCK_K,
    ) -> None:
        """``backend`` None chooses by device; asking for TRITON where it cannot run raises."""
        super().__init__()
        if backend is None:
            backend = select_backend(weights)
        elif backend is KernelBackend.TRITON and (reason := triton_refusal(weights)) is not None:
            raise ValueError(f"{weights.name}: Triton backend unavailable: {reason}")
        self.name = weights.name
        self.in_features = weights.in_features
        self.out_features = weights.out_features
        self.weight_bits = weights.weight_bits
        self.activation_bits = weights.activation_bits
        self.backend = backend
        self.layout: KernelWeightLayout | None = None
        self.register_buffer("weight_scale", weights.weight_scale)
        self.register_buffer("weight_zero_point", weights.weight_zero_point)
        self.register_buffer("act_clip", weights.act_clip)
        self.register_buffer("bias", weights.bias)
        if backend is KernelBackend.TRITON:
            self.layout = KernelWeightLayout(
                self.in_features, self.out_features, self.weight_bits, block_k
            )
            kernel_qweight = to_kernel_layout(weights.weight_codes(), self.layout)
            self.register_buffer("qweight", None)
            self.register_buffer("weight_codes", None)
            self.register_buffer("kernel_qweight", kernel_qweight, persistent=False)
        else:
            self.register_buffer("qweight", weights.qweight)
            self.register_buffer(
                "weight_codes", weights.weight_codes().to(torch.int8), persistent=False
            )
            self.register_buffer("kernel_qweight", None)
        self._groups: torch.Tensor | None = None

    def packed(self) -> PackedLinearWeights:
        """The layer's tensors as a ``PackedLinearWeights`` (validated)."""
        if self.qweight is not None:
            qweight = self.qweight
        else:
            assert self.kernel_qweight is not None and self.layout is not None
            qweight = format_v1_from_kernel_layout(self.kernel_qweight, self.layout)
        return PackedLinearWeights(
            name=self.name,
            in_features=self.in_features,
            out_features=self.out_features,
            weight_bits=self.weight_bits,
            activation_bits=self.activation_bits,
            qweight=qweight,
            weight_scale=self.weight_scale,
            weight_zero_point=self.weight_zero_point,
            act_clip=self.act_clip,
            bias=self.bias,
        )

    def set_clip_group(self, groups: torch.Tensor) -> None:
        self._groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._groups is None:
            raise RuntimeError(
                f"{self.name}: no timestep group set; bind the transformer with "
                "qvgen.timestep_groups.bind_timestep_groups or call set_clip_group first"
            )
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        clip = clip_rows(self.act_clip, self._groups, self._rows_per_group(x))
        if self.kernel_qweight is not None:
            return self._triton_forward(x2d, clip).reshape(*lead, self.out_features)
        assert self.weight_codes is not None
        y = quantized_linear_reference(
            x2d,
            self.weight_codes,
            self.weight_scale,
            self.weight_zero_point,
            self.bias,
            clip,
            self.weight_bits,
            self.activation_bits,
        )
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def _triton_forward(self, x2d: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """Quantize each input once, then one GEMM with the fused epilogue; output in x's dtype."""
        # Imported here so that the module loads (and falls back) where Triton is absent.
        from service.kernels.activation_quant import quantize_activations
        from service.kernels.lowbit_gemm import lowbit_linear

        assert self.kernel_qweight is not None and self.layout is not None
        qa = quantize_activations(x2d, clip, self.activation_bits, self.layout.block_k)
        epilogue = (self.weight_scale, self.weight_zero_point, self.bias)
        return lowbit_linear(qa, self.kernel_qweight, self.layout, epilogue, x2d.dtype)

    def _rows_per_group(self, x: torch.Tensor) -> int:
        """Rows of x that share each entry of the current groups (one group per sample)."""
        rows = x.numel() // self.in_features
        assert self._groups is not None
        n = self._groups.numel()
        if n == 1:
            return rows
        if x.ndim < 3 or x.shape[0] != n:
            raise ValueError(
                f"{self.name}: {n} clip groups set for input of shape {tuple(x.shape)}; "
                "expected one group per sample of a [B, S, K] input"
            )
        return rows // n

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"W{self.weight_bits}A{self.activation_bits}, backend={self.backend.value}"
        )
