"""q, k and v of one input as one layer: one activation pass, one GEMM launch — same codes.

Wan's self-attention computes q, k, v from the same normed hidden states, and its
cross-attention k, v from the same text states. ``FusedLowBitLinear`` holds C such
``TritonLowBitLinear`` layers concatenated along N and computes exactly their outputs side by
side, with each layer's own codes:

* each packed layer has its own ``act_clip`` table, so one shared quantization would be exact
  only where the tables are equal. Instead the activation pass reads x once, measures each
  token's extremes once, and writes C sets of codes, one per table
  (``activation_quant.quantize_activations_shared``): the codes of ``qvgen.numerics``, table by
  table;
* the GEMM runs once over the concatenated weights; each tile of weight rows reads the codes,
  scales and sums of its own segment (``lowbit_gemm``), so no output changes.

``fuse_attention_projections`` installs them where diffusers' ``WanAttention`` reads fused
projections (``to_qkv``, ``to_kv`` with ``fused_projections = True``), before the timestep hook
is bound.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from qvgen.device_copy import shared_copy
from qvgen.timestep_groups import check_groups
from service.kernels.lowbit_linear import TritonLowBitLinear, rows_per_sample
from service.kernels.prologue import PROLOGUES, Prologue
from service.kernels.weight_layout import KernelWeightLayout

logger = logging.getLogger(__name__)


class FusionRefused(ValueError):
    """Layers that cannot be computed as one (different shapes, bits, bias presence, tiles)."""


class FusedLowBitLinear(nn.Module):
    """C Triton layers that read one input. Buffers: ``kernel_qweight`` uint8 [C·N, K_pad/2],
    ``weight_scale`` / ``weight_zero_point`` / ``bias`` float32 [C·N], ``act_clip`` float32
    [C, G, 2], ``sample_clip`` float32 [C, B, 2] (the current groups' factors, written in place
    by ``set_clip_group`` as in ``LowBitLinear``)."""

    kernel_qweight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None
    act_clip: torch.Tensor
    sample_clip: torch.Tensor

    def __init__(self, layers: list[TritonLowBitLinear]) -> None:
        super().__init__()
        _check_fusable(layers)
        first = layers[0]
        self.names = [layer.name for layer in layers]
        self.name = "+".join(self.names)
        self.in_features = first.in_features
        self.out_features = first.out_features * len(layers)
        self.activation_bits = first.activation_bits
        self.layout = KernelWeightLayout(
            self.in_features, self.out_features, first.weight_bits, first.layout.block_k
        )
        self.dtype_anchor = nn.Parameter(first.dtype_anchor.detach().clone(), requires_grad=False)
        self.register_buffer("kernel_qweight", torch.cat([m.kernel_qweight for m in layers]))
        self.register_buffer("weight_scale", torch.cat([m.weight_scale for m in layers]))
        self.register_buffer("weight_zero_point", torch.cat([m.weight_zero_point for m in layers]))
        biases = [m.bias for m in layers]
        self.register_buffer(
            "bias", None if biases[0] is None else torch.cat([b for b in biases if b is not None])
        )
        self.register_buffer("act_clip", torch.stack([m.act_clip for m in layers]))
        self.register_buffer("sample_clip", self.act_clip.new_empty((len(layers), 0, 2)))

    def set_clip_group(self, groups: torch.Tensor) -> None:
        g = torch.as_tensor(groups, dtype=torch.int64).reshape(-1)
        check_groups(g, self.act_clip.shape[1])
        index = shared_copy(g, self.act_clip.device)
        if self.sample_clip.shape[1] != g.numel():
            self.sample_clip = self.act_clip.new_empty((self.act_clip.shape[0], g.numel(), 2))
        torch.index_select(self.act_clip, 1, index, out=self.sample_clip)

    def forward(self, x: torch.Tensor | Prologue) -> torch.Tensor:
        """The C layers' outputs side by side; a ``Prologue`` (``service.kernels.prologue``) is
        computed and quantized for the C tables by one fused kernel."""
        # Imported here, as in lowbit_linear: this module loads where Triton is absent.
        from service.kernels.activation_quant import quantize_activations_shared
        from service.kernels.lowbit_gemm import lowbit_linear

        source = x.source if isinstance(x, PROLOGUES) else x
        rows = rows_per_sample(self, source, self.in_features, self.sample_clip.shape[1])
        tables = self.sample_clip.shape[0]
        if self.sample_clip.shape[1] == 1:
            clips = self.sample_clip.expand(tables, rows, 2)
        else:
            clips = self.sample_clip.repeat_interleave(rows, dim=1)
        if isinstance(x, PROLOGUES):
            qa = x.quantize(clips, self.activation_bits, self.layout.block_k)
        else:
            x2d = x.reshape(-1, self.in_features)
            qa = quantize_activations_shared(x2d, clips, self.activation_bits, self.layout.block_k)
        epilogue = (self.weight_scale, self.weight_zero_point, self.bias)
        y = lowbit_linear(qa, self.kernel_qweight, self.layout, epilogue, source.dtype)
        return y.reshape(*source.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.names}, in_features={self.in_features}, out_features={self.out_features}"


def _check_fusable(layers: list[TritonLowBitLinear]) -> None:
    from service.kernels.lowbit_gemm import segments_fit

    if len(layers) < 2 or not all(isinstance(m, TritonLowBitLinear) for m in layers):
        raise FusionRefused("fusion needs two or more Triton low-bit layers")
    first = layers[0]
    facts = {
        (m.in_features, m.out_features, m.weight_bits, m.activation_bits, m.layout.block_k,
         m.bias is None, m.act_clip.shape[0], m.kernel_qweight.device)
        for m in layers
    }  # fmt: skip
    if len(facts) != 1:
        raise FusionRefused(f"{[m.name for m in layers]} differ in shape, bits, bias or device")
    if not segments_fit(first.out_features, first.kernel_qweight.device, None):
        raise FusionRefused(f"{first.out_features} outputs are not a multiple of every GEMM tile")


def fuse_attention_projections(transformer: nn.Module) -> int:
    """Fuse q/k/v of every Wan self-attention and k/v of every cross-attention whose layers
    are Triton low-bit layers; returns how many were fused. Call before binding the timestep
    hook (it collects the layers it feeds when bound)."""
    fused = 0
    for module in transformer.modules():
        if type(module).__name__ != "WanAttention" or getattr(module, "fused_projections", True):
            continue
        names = ["to_k", "to_v"] if module.is_cross_attention else ["to_q", "to_k", "to_v"]
        layers = [getattr(module, n) for n in names]
        if not all(isinstance(m, TritonLowBitLinear) for m in layers):
            continue  # the reference layers gain nothing from one launch
        try:
            combined = FusedLowBitLinear(layers)
        except FusionRefused as why:
            logger.info("projections left separate: %s", why)
            continue
        for n in names:
            delattr(module, n)
        setattr(module, "to_kv" if module.is_cross_attention else "to_qkv", combined)
        module.fused_projections = True  # type: ignore[assignment]  # what WanAttention reads
        fused += 1
    return fused
