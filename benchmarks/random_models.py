"""Wan 2.1 models with random weights, built directly on the target device, for benchmarks.

The end-to-end benchmark needs the real Wan 2.1 1.3B and 14B architectures but not their
trained weights: time and memory depend on shapes, not values. Nothing here downloads anything
or materialises a full-size model on the CPU:

* the bf16 transformer is built on the meta device (diffusers' class, real config) and every
  parameter is then drawn on the target device;
* the packed transformer is built the same way, except that every linear the default
  ``qvgen.layer_policy.LayerPolicy`` selects becomes a ``LowBitLinear`` made from random
  ``PackedLinearWeights`` drawn on the device — no full-precision weight ever exists for it —
  and the clip-group hook is installed as the packed loader does;
* the Wan VAE (``AutoencoderKLWan``; its default config is Wan 2.1's) is built the same way;
* the text encoder is a small stand-in UMT5 with the real output width, kept on the CPU.

Random values: a weight of fan-in f is drawn from N(0, 1/f) so activations keep unit scale over
depth; norm weights are 1 and biases 0. Parameters of a model's ``_keep_in_fp32_modules`` stay
float32 as diffusers' ``from_pretrained(torch_dtype=bf16)`` keeps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import nn
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from qvgen.layer_policy import LayerPolicy
from qvgen.linear_swap import swap_linears
from qvgen.packed_layer import PackedLinearWeights
from qvgen.packing import pack_codes
from qvgen.timestep_groups import DEFAULT_GROUPS, NUM_TRAIN_TIMESTEPS, bind_timestep_groups
from qvgen.tiny_pipelines import TextEncoderSize, build_tokenizer
from service.kernels.fused_projections import FusedLowBitLinear, fuse_attention_projections
from service.kernels.lowbit_linear import LowBitLinear, build_lowbit_linear


@dataclass(frozen=True)
class WanArchitecture:
    """A ``WanTransformer3DModel`` configuration (text-to-video, no image branch).

    Inner width = ``num_heads · head_dim``; tokens per video = latent frames × latent height ×
    latent width / (patch_t · patch_h · patch_w).
    """

    name: str
    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    text_dim: int = 4096
    freq_dim: int = 256
    latent_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    def config(self) -> dict[str, Any]:
        """Keyword arguments of ``WanTransformer3DModel``."""
        return {
            "patch_size": self.patch_size,
            "num_attention_heads": self.num_heads,
            "attention_head_dim": self.head_dim,
            "in_channels": self.latent_channels,
            "out_channels": self.latent_channels,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "ffn_dim": self.ffn_dim,
            "num_layers": self.num_layers,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
        }


# The released Wan 2.1 text-to-video transformers (their transformer/config.json).
WAN_2_1_1_3B = WanArchitecture(
    "wan2.1-1.3b", num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960
)
WAN_2_1_14B = WanArchitecture(
    "wan2.1-14b", num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824
)
WAN_ARCHITECTURES = (WAN_2_1_1_3B, WAN_2_1_14B)


@dataclass(frozen=True)
class VaeArchitecture:
    """An ``AutoencoderKLWan`` configuration; the defaults are the class defaults = Wan 2.1's.

    ``latents_mean`` / ``latents_std`` None keep the class's (Wan 2.1's, 16 channels); a VAE
    with another ``z_dim`` must give its own.
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    spatial_factor: int = 8
    temporal_factor: int = 4
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def config(self) -> dict[str, Any]:
        """Keyword arguments of ``AutoencoderKLWan``."""
        config: dict[str, Any] = {
            "base_dim": self.base_dim,
            "z_dim": self.z_dim,
            "dim_mult": list(self.dim_mult),
            "num_res_blocks": self.num_res_blocks,
            "temperal_downsample": list(self.temporal_downsample),
            "scale_factor_spatial": self.spatial_factor,
            "scale_factor_temporal": self.temporal_factor,
        }
        if self.latents_mean is not None:
            config["latents_mean"] = list(self.latents_mean)
        if self.latents_std is not None:
            config["latents_std"] = list(self.latents_std)
        return config


WAN_2_1_VAE = VaeArchitecture()

# Stand-in for UMT5-XXL (5.7B parameters): one layer, the real output width 4096 and the real
# 512-token prompt length, so the transformer sees prompt embeddings of the real shape.
UMT5_STAND_IN = TextEncoderSize(d_model=4096, num_heads=2, d_kv=64, d_ff=256, max_tokens=512)


def _keeps_fp32(module: nn.Module, path: str) -> bool:
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    return any(name in path.split(".") for name in keep)


def _random_value(path: str, shape: torch.Size, tensor: torch.Tensor, gen: torch.Generator) -> None:
    """Fill ``tensor`` in place: N(0, 1/fan_in) for weights, 1 for norm scales, 0 for biases."""
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        tensor.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
    elif "norm" in path and path.endswith("weight"):
        tensor.fill_(1.0)
    else:
        tensor.zero_()


def materialize_random(
    model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int
) -> nn.Module:
    """Give every meta parameter of ``model`` a random value on ``device``; move the buffers.

    Floating parameters take ``dtype`` except those of ``model._keep_in_fp32_modules``
    (float32). Returns ``model`` in eval mode with gradients off.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    for module_path, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            path = f"{module_path}.{name}" if module_path else name
            target = torch.float32 if _keeps_fp32(model, path) else dtype
            value = torch.empty(param.shape, dtype=target, device=device)
            _random_value(path, param.shape, value, gen)
            module._parameters[name] = nn.Parameter(value, requires_grad=False)
    # Buffers (e.g. rotary tables) were computed for real on the CPU: move them, dtypes kept.
    model.to(device)
    return model.eval().requires_grad_(False)


def random_packed_weights(
    name: str,
    linear: nn.Linear,
    device: torch.device,
    gen: torch.Generator,
    bits: int = 4,
    clip_groups: int = DEFAULT_GROUPS,
) -> PackedLinearWeights:
    """Format-v1 tensors of ``linear``'s shape with random codes, drawn on ``device``.

    s_w is chosen so that ŵ = s_w (q_w − z_w) has the std 1/√K of the bf16 model's weights
    (uniform codes over 2^b levels have std ≈ 2^b / √12); the clip factors lie in [0.5, 1].
    """
    n, k = linear.out_features, linear.in_features
    levels = 2**bits
    codes = torch.randint(0, levels, (n, k), generator=gen, device=device, dtype=torch.int32)
    code_std = levels / math.sqrt(12.0)
    clip = torch.empty((clip_groups, 2), device=device).uniform_(0.5, 1.0, generator=gen)
    bias = None
    if linear.bias is not None:
        bias = torch.empty(n, device=device).normal_(0.0, 0.01, generator=gen)
    return PackedLinearWeights(
        name=name,
        in_features=k,
        out_features=n,
        weight_bits=bits,
        activation_bits=bits,
        qweight=pack_codes(codes, bits),
        weight_scale=torch.full((n,), 1.0 / (code_std * math.sqrt(k)), device=device),
        # z_w in the middle of the code range, as min–max quantizing a zero-mean weight gives.
        weight_zero_point=torch.full((n,), (levels - 1) / 2, device=device),
        act_clip=clip,
        bias=bias,
    )


def _meta_transformer(arch: WanArchitecture) -> nn.Module:
    # Buffers stay real so the rotary tables are computed as usual.
    with init_empty_weights(include_buffers=False):
        # Any: mypy resolves diffusers' model classes to their dummy placeholders.
        model: Any = WanTransformer3DModel(**arch.config())
    return model


def random_bf16_transformer(
    arch: WanArchitecture, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> nn.Module:
    """``WanTransformer3DModel`` of ``arch`` with random weights in ``dtype`` on ``device``."""
    return materialize_random(_meta_transformer(arch), device, dtype, seed)


def random_packed_transformer(
    arch: WanArchitecture,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    bits: int = 4,
    policy: LayerPolicy | None = None,
    clip_groups: int = DEFAULT_GROUPS,
    fuse_projections: bool = True,
) -> nn.Module:
    """``arch`` with the ``policy``-selected linears as random ``LowBitLinear`` (backend chosen
    by device, as the packed loader does) and the rest random in ``dtype``; q/k/v fused as the
    engine serves them (``fuse_projections``); bound to the timestep groups. Raises
    ``ValueError`` when the policy selects no linear."""
    model = _meta_transformer(arch)
    names = (policy or LayerPolicy()).select(model)
    gen = torch.Generator(device=device).manual_seed(seed + 1)

    def build(name: str, linear: nn.Linear) -> nn.Module:
        return build_lowbit_linear(
            random_packed_weights(name, linear, device, gen, bits, clip_groups)
        )

    swap_linears(model, names, build)
    materialize_random(model, device, dtype, seed)
    if fuse_projections:
        fuse_attention_projections(model)
    bind_timestep_groups(model, clip_groups, NUM_TRAIN_TIMESTEPS)
    return model


def random_wan_vae(
    arch: VaeArchitecture, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> nn.Module:
    """``AutoencoderKLWan`` of ``arch`` with random weights in ``dtype`` on ``device``."""
    with init_empty_weights(include_buffers=False):
        vae: Any = AutoencoderKLWan(**arch.config())
    return materialize_random(vae, device, dtype, seed)


def stand_in_text_encoder(
    size: TextEncoderSize, seed: int = 0
) -> tuple[PreTrainedTokenizerFast, nn.Module]:
    """A word-level tokenizer and a seeded float32 UMT5 encoder of ``size``, on the CPU."""
    config = UMT5Config(
        vocab_size=size.vocab_size,
        d_model=size.d_model,
        d_kv=size.d_kv,
        d_ff=size.d_ff,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(config)
    return build_tokenizer(size), encoder.eval().requires_grad_(False)


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer ``model`` holds (weights, packed codes, scales,
    clip factors, rotary tables): what the model keeps in memory between calls."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def count_quantized(model: nn.Module) -> int:
    """How many packed linears ``model`` holds (a fused q/k/v counts as its three)."""
    return sum(
        1
        if isinstance(m, LowBitLinear)
        else len(m.names)
        if isinstance(m, FusedLowBitLinear)
        else 0
        for m in model.modules()
    )
