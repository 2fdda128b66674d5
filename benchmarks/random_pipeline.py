"""A packed Wan 2.1 pipeline directory with random weights, for benchmarks that load from disk.

``benchmarks.ready_time`` times a worker's start, which reads a pipeline directory; at the real
sizes (``benchmarks.random_models``) that needs no trained weights. The transformer goes through
the writer ``qvgen export`` uses (``qvgen.checkpoint.write_packed``, format v1): random codes for
every linear the default ``LayerPolicy`` selects (``random_packed_weights``), the other tensors
drawn as ``materialize_random`` draws them, in bf16. The VAE (Wan 2.1's config unless told
otherwise) and the stand-in text encoder are saved by diffusers and transformers; the scheduler
is Wan 2.1's flow matching with the 480p shift. Everything is built on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from torch import nn

from benchmarks.random_models import (
    UMT5_STAND_IN,
    WAN_2_1_VAE,
    VaeArchitecture,
    WanArchitecture,
    _meta_transformer,
    materialize_random,
    random_packed_weights,
    random_wan_vae,
    stand_in_text_encoder,
)
from qvgen.checkpoint import PackedCheckpoint, PackedScheme, write_packed
from qvgen.layer_policy import LayerPolicy
from qvgen.linear_swap import plain_linears, swap_linears
from qvgen.packed_layer import PackedLinearWeights
from qvgen.timestep_groups import DEFAULT_GROUPS
from qvgen.tiny_pipelines import TextEncoderSize
from training.quant.export import diffusers_config

WAN_2_1_SHIFT = 3.0  # the flow-matching shift of Wan 2.1 at 480p


def random_packed_checkpoint(arch: WanArchitecture, seed: int = 0) -> PackedCheckpoint:
    """Format-v1 contents of a W4A4 ``arch`` with random weights (module docstring)."""
    cpu = torch.device("cpu")
    model = _meta_transformer(arch)
    gen = torch.Generator(device=cpu).manual_seed(seed + 1)
    layers: dict[str, PackedLinearWeights] = {}

    def pack(name: str, linear: nn.Linear) -> nn.Module:
        layers[name] = random_packed_weights(name, linear, cpu, gen, clip_groups=DEFAULT_GROUPS)
        return nn.Identity()  # its tensors are the packed ones, not the model's

    swap_linears(model, LayerPolicy().select(model), pack)
    materialize_random(model, cpu, torch.bfloat16, seed)
    return PackedCheckpoint(
        config=diffusers_config(model),
        scheme=PackedScheme(weight_bits=4, activation_bits=4, clip_groups=DEFAULT_GROUPS),
        layers=layers,
        full_precision_modules=tuple(plain_linears(model)),
        tensors=dict(model.state_dict()),
    )


def write_random_wan(
    arch: WanArchitecture,
    out: Path,
    vae: VaeArchitecture = WAN_2_1_VAE,
    text_encoder: TextEncoderSize = UMT5_STAND_IN,
    seed: int = 0,
) -> Path:
    """Write a loadable ``WanPipeline`` directory of ``arch`` to ``out``; returns ``out``."""
    tokenizer, encoder = stand_in_text_encoder(text_encoder, seed)
    # Any: mypy resolves diffusers' pipeline classes to their dummy placeholders.
    pipeline: Any = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=encoder,
        vae=random_wan_vae(vae, torch.device("cpu"), torch.float32, seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=WAN_2_1_SHIFT),
        transformer=None,
    )
    pipeline.save_pretrained(out)
    write_packed(random_packed_checkpoint(arch, seed), out / "transformer")
    # Saved without a transformer, the index names none; the loader reads the packed one.
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["transformer"] = ["diffusers", "WanTransformer3DModel"]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return out
