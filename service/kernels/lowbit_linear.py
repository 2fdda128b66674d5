"""``LowBitLinear``: the packed quantized linear that serving runs, one type per weight layout.

A layer holds one linear in format v1 (``qvgen.packed_layer.PackedLinearWeights``, any bit width
of the format: W4A4, W3A3, …) and computes y = Q_a(x) · Q_w(W)^T + b with the clip factors of
the timestep group set by ``qvgen.timestep_groups.bind_timestep_groups``. Two layouts of the
weight codes, each its own type:

* ``ReferenceLowBitLinear``: format-v1 ``qweight`` plus the codes unpacked once to int8; pure
  PyTorch with exact integers, on any device;
* ``TritonLowBitLinear``: only ``kernel_qweight``, the codes repacked once into the kernels'
  layout (``service.kernels.weight_layout``); one-pass activation quantization and an int8
  tensor-core GEMM with the epilogue fused.

``build_lowbit_linear`` picks the type from the device the weights sit on: Triton on CUDA sm_8x /
sm_90 (or anywhere under ``TRITON_INTERPRET=1``), else the reference, announced by one log line.
Build a layer from weights already on the serving device.
"""

from __future__ import annotations

import abc
import enum
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from qvgen.device_copy import shared_copy
from qvgen.packed_layer import PackedLinearWeights
from qvgen.timestep_groups import check_groups, expand_clip_rows
from qvgen.triton_support import log_fallback_once, triton_unavailable_reason
from service.kernels.prologue import PROLOGUES, Prologue
from service.kernels.reference import quantized_linear_reference
from service.kernels.weight_layout import (
    DEFAULT_BLOCK_K,
    MAX_KERNEL_BITS,
    KernelWeightLayout,
    format_v1_from_kernel_layout,
    to_kernel_layout,
)

if TYPE_CHECKING:
    from service.kernels.activation_quant import QuantizedActivations


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


class NamedLayer(Protocol):
    name: str


def rows_per_sample(layer: NamedLayer, x: torch.Tensor, in_features: int, samples: int) -> int:
    """Rows of x that share each sample's clip factors: one group per sample of a
    [B, …, K] input ([B, K] too: the embedders see one row per sample).

    ``layer`` names the layer in the errors only: its name is read on the raising paths alone,
    because torch.compile guards on every attribute a traced forward reads, and a guard on the
    name (different in every block) recompiles each block until dynamo's recompile limit sends
    the rest of the model to eager (seen on an H200: 8 of 30 blocks compiled)."""
    if samples == 0:
        raise RuntimeError(
            f"{layer.name}: no timestep group set; bind the transformer with "
            "qvgen.timestep_groups.bind_timestep_groups or call set_clip_group first"
        )
    rows = x.numel() // in_features
    if samples == 1:
        return rows
    if x.ndim < 2 or x.shape[0] != samples:
        raise ValueError(
            f"{layer.name}: {samples} clip groups set for input of shape {tuple(x.shape)}; "
            "expected one group per sample of a [B, …, K] input"
        )
    return rows // samples


class LowBitLinear(nn.Module, abc.ABC):
    """What every layout shares: per-channel numbers, clip table, timestep group, the forward.

    Buffers: ``weight_scale`` / ``weight_zero_point`` float32 [N], ``act_clip`` float32 [G, 2],
    ``bias`` float32 [N] (when present), and ``sample_clip`` float32 [B, 2]: the (α_lo, α_hi)
    of each sample's timestep group for the next forward call ([0, 2] until one is set). Subclasses
    hold the codes and compute the product.

    ``set_clip_group`` (the timestep hook) writes ``sample_clip`` in place, so a compiled
    graph, which takes buffers as inputs, reads the current step's factors on every call
    instead of a value frozen at trace time.

    ``dtype_anchor`` is an empty parameter in the model's compute dtype: diffusers reads a
    module's dtype from its first parameter (Wan's time embedder does, for its input), and a
    module made only of packed layers would otherwise have none.
    """

    backend: KernelBackend
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    act_clip: torch.Tensor
    bias: torch.Tensor | None
    sample_clip: torch.Tensor

    def __init__(
        self, weights: PackedLinearWeights, compute_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.dtype_anchor = nn.Parameter(
            torch.empty(0, dtype=compute_dtype, device=weights.qweight.device), requires_grad=False
        )
        self.name = weights.name
        self.in_features = weights.in_features
        self.out_features = weights.out_features
        self.weight_bits = weights.weight_bits
        self.activation_bits = weights.activation_bits
        self.register_buffer("weight_scale", weights.weight_scale)
        self.register_buffer("weight_zero_point", weights.weight_zero_point)
        self.register_buffer("act_clip", weights.act_clip)
        self.register_buffer("bias", weights.bias)
        self.register_buffer("sample_clip", weights.act_clip.new_empty((0, 2)), persistent=False)

    @abc.abstractmethod
    def format_v1_codes(self) -> torch.Tensor:
        """The codes as format v1's ``qweight`` (uint8 [N, ⌈K/2⌉] at ≤ 4 bits)."""

    def packed(self) -> PackedLinearWeights:
        """The layer's tensors as a ``PackedLinearWeights`` (validated)."""
        return PackedLinearWeights(
            name=self.name,
            in_features=self.in_features,
            out_features=self.out_features,
            weight_bits=self.weight_bits,
            activation_bits=self.activation_bits,
            qweight=self.format_v1_codes(),
            weight_scale=self.weight_scale,
            weight_zero_point=self.weight_zero_point,
            act_clip=self.act_clip,
            bias=self.bias,
        )

    def set_clip_group(self, groups: torch.Tensor) -> None:
        """Groups of the samples of the next calls, int64 [B] (a CPU tensor: no GPU wait)."""
        g = torch.as_tensor(groups, dtype=torch.int64).reshape(-1)
        check_groups(g, self.act_clip.shape[0])
        index = shared_copy(g, self.act_clip.device)  # one copy for every layer of the call
        if self.sample_clip.shape[0] != g.numel():
            self.sample_clip = self.act_clip.new_empty((g.numel(), 2))
        torch.index_select(self.act_clip, 0, index, out=self.sample_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        clip = expand_clip_rows(self.sample_clip, self._rows_per_sample(x))
        return self.product(x2d, clip).to(x.dtype).reshape(*lead, self.out_features)

    @abc.abstractmethod
    def product(self, x2d: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """Q_a(x) · Q_w(W)^T + b for x [M, K] with per-row clip factors [M, 2]."""

    def _rows_per_sample(self, x: torch.Tensor) -> int:
        return rows_per_sample(self, x, self.in_features, self.sample_clip.shape[0])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"W{self.weight_bits}A{self.activation_bits}, backend={self.backend.value}"
        )


class ReferenceLowBitLinear(LowBitLinear):
    """Format-v1 codes: ``qweight`` uint8 [N, ⌈K/2⌉] and ``weight_codes`` int8 [N, K], unpacked
    once at construction; the product is ``service.kernels.reference`` (exact integers)."""

    backend = KernelBackend.REFERENCE
    qweight: torch.Tensor
    weight_codes: torch.Tensor

    def __init__(
        self, weights: PackedLinearWeights, compute_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(weights, compute_dtype)
        self.register_buffer("qweight", weights.qweight)
        self.register_buffer(
            "weight_codes", weights.weight_codes().to(torch.int8), persistent=False
        )

    def format_v1_codes(self) -> torch.Tensor:
        return self.qweight

    def product(self, x2d: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        return _reference_op(
            x2d,
            self.weight_codes,
            self.weight_scale,
            self.weight_zero_point,
            self.bias,
            clip,
            self.weight_bits,
            self.activation_bits,
        )


# An opaque operator, so that a compiler never rewrites the contract's float32 expressions:
# inductor's GPU code divides with an approximate instruction unless told otherwise, and any
# fused rewrite may round x / s_x differently and move a code. Inside, eager PyTorch runs.
@torch.library.custom_op("qvgen::lowbit_linear_reference", mutates_args=())
def _reference_op(
    x2d: torch.Tensor,
    weight_codes: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: torch.Tensor | None,
    clip: torch.Tensor,
    weight_bits: int,
    activation_bits: int,
) -> torch.Tensor:
    return quantized_linear_reference(
        x2d,
        weight_codes,
        weight_scale,
        weight_zero_point,
        bias,
        clip,
        weight_bits,
        activation_bits,
    )


@_reference_op.register_fake
def _reference_fake(
    x2d: torch.Tensor,
    weight_codes: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor,
    bias: torch.Tensor | None,
    clip: torch.Tensor,
    weight_bits: int,
    activation_bits: int,
) -> torch.Tensor:
    return x2d.new_empty((x2d.shape[0], weight_codes.shape[0]), dtype=torch.float32)


class TritonLowBitLinear(LowBitLinear):
    """Kernel-layout codes only: ``kernel_qweight`` uint8 [N, K_pad/2], split per K-block of
    ``block_k`` (``service.kernels.weight_layout``) — about a quarter of a bf16 weight."""

    backend = KernelBackend.TRITON
    kernel_qweight: torch.Tensor

    def __init__(
        self,
        weights: PackedLinearWeights,
        block_k: int = DEFAULT_BLOCK_K,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        if (reason := triton_refusal(weights)) is not None:
            raise ValueError(f"{weights.name}: Triton backend unavailable: {reason}")
        super().__init__(weights, compute_dtype)
        self.layout = KernelWeightLayout(
            self.in_features, self.out_features, self.weight_bits, block_k
        )
        kernel_qweight = to_kernel_layout(weights.weight_codes(), self.layout)
        self.register_buffer("kernel_qweight", kernel_qweight, persistent=False)
        from service.kernels.lowbit_gemm import prepare_device

        # The GPU's kernel configurations are looked up here, never inside a compiled graph.
        prepare_device(kernel_qweight.device)

    def format_v1_codes(self) -> torch.Tensor:
        return format_v1_from_kernel_layout(self.kernel_qweight, self.layout)

    def forward(self, x: torch.Tensor | Prologue) -> torch.Tensor:
        """As ``LowBitLinear.forward``; a ``Prologue`` (``service.kernels.prologue``) is computed
        and quantized by one fused kernel, then the same GEMM runs on its codes."""
        if not isinstance(x, PROLOGUES):
            return super().forward(x)
        source = x.source
        clip = expand_clip_rows(self.sample_clip, self._rows_per_sample(source))
        qa = x.quantize(clip.unsqueeze(0), self.activation_bits, self.layout.block_k)
        y = self._gemm(qa, source.dtype)
        return y.reshape(*source.shape[:-1], self.out_features)

    def product(self, x2d: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """Quantize each input once, then one GEMM with the fused epilogue; output in x's dtype."""
        # Imported here so that the module loads (and falls back) where Triton is absent.
        from service.kernels.activation_quant import quantize_activations

        qa = quantize_activations(x2d, clip, self.activation_bits, self.layout.block_k)
        return self._gemm(qa, x2d.dtype)

    def _gemm(self, qa: QuantizedActivations, out_dtype: torch.dtype) -> torch.Tensor:
        from service.kernels.lowbit_gemm import lowbit_linear

        epilogue = (self.weight_scale, self.weight_zero_point, self.bias)
        return lowbit_linear(qa, self.kernel_qweight, self.layout, epilogue, out_dtype)


def build_lowbit_linear(
    weights: PackedLinearWeights,
    backend: KernelBackend | None = None,
    block_k: int = DEFAULT_BLOCK_K,
    compute_dtype: torch.dtype = torch.float32,
) -> LowBitLinear:
    """The layer for ``weights`` on ``backend``; None chooses by device (``select_backend``).
    Asking for TRITON where it cannot run raises ``ValueError`` naming the layer and why.
    ``compute_dtype`` is the dtype of the activations it will see (``dtype_anchor``)."""
    if backend is None:
        backend = select_backend(weights)
    if backend is KernelBackend.TRITON:
        return TritonLowBitLinear(weights, block_k, compute_dtype)
    return ReferenceLowBitLinear(weights, compute_dtype)
