"""Noise a clean latent the way each family was trained, and call its transformer.

Per sample, with its own generator (``data.order``), in this order: noise ε ~ N(0, I) of the
latent's shape, a uniform u for the timestep, a uniform for caption dropout.

* Wan 2.1, flow matching: σ = u ∈ [0, 1), x_t = (1 − σ)·x_0 + σ·ε, t = 1000·σ.
* CogVideoX, DDIM with v-prediction: t = ⌊u·1000⌋ ∈ {0 … 999},
  x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε with the ᾱ of the pipeline's own scheduler (zero-SNR rescaled
  for CogVideoX-2b). The loss compares student and teacher outputs, so the prediction type
  matters only through the inputs the transformer sees.

Caption dropout replaces the prompt embedding by the empty prompt's, as classifier-free
guidance does at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import CogVideoXDDIMScheduler
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from torch import nn

from qvgen.family import ModelFamily

NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class NoisyBatch:
    """Transformer inputs for one step: x_t in the family's layout, t [B], text [B, L, D]."""

    hidden_states: torch.Tensor
    timestep: torch.Tensor
    text: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None


class Noiser:
    """Family-specific noising; ``noisy_batch`` builds the inputs of one step."""

    def __init__(
        self,
        family: ModelFamily,
        caption_dropout: float,
        alphas_cumprod: torch.Tensor | None = None,
    ) -> None:
        if (family is ModelFamily.COGVIDEOX) != (alphas_cumprod is not None):
            raise ValueError("CogVideoX noising needs the scheduler's ᾱ; Wan's takes none")
        self.family = family
        self.caption_dropout = caption_dropout
        self.alphas_cumprod = alphas_cumprod

    @classmethod
    def from_pipeline(cls, family: ModelFamily, model_dir: str, caption_dropout: float) -> Noiser:
        """Read ᾱ from the pipeline's own scheduler config (CogVideoX)."""
        if family is ModelFamily.WAN:
            return cls(family, caption_dropout)
        scheduler = CogVideoXDDIMScheduler.from_pretrained(model_dir, subfolder="scheduler")
        return cls(family, caption_dropout, scheduler.alphas_cumprod.double())

    def _noise_one(self, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(x0.shape, generator=g)
        u = float(torch.rand((), generator=g))
        if self.family is ModelFamily.WAN:
            return (1.0 - u) * x0 + u * eps, torch.tensor(NUM_TRAIN_TIMESTEPS * u)
        assert self.alphas_cumprod is not None
        t = min(int(u * NUM_TRAIN_TIMESTEPS), NUM_TRAIN_TIMESTEPS - 1)
        abar = self.alphas_cumprod[t]
        x_t = abar.sqrt().float() * x0 + (1.0 - abar).sqrt().float() * eps
        return x_t, torch.tensor(t, dtype=torch.long)

    def noisy_batch(
        self,
        samples: list[tuple[torch.Tensor, torch.Tensor]],
        generators: list[torch.Generator],
        empty_text: torch.Tensor,
    ) -> NoisyBatch:
        """``samples``: (latents [C, F, h, w], text [L, D]) per sample, on the CPU."""
        xs, ts, texts = [], [], []
        for (x0, text), g in zip(samples, generators, strict=True):
            x_t, t = self._noise_one(x0, g)
            drop = float(torch.rand((), generator=g)) < self.caption_dropout
            xs.append(x_t)
            ts.append(t)
            texts.append(empty_text if drop else text)
        hidden = torch.stack(xs)
        if self.family is ModelFamily.COGVIDEOX:
            hidden = hidden.permute(0, 2, 1, 3, 4)  # CogVideoX takes [B, F, C, h, w]
        return NoisyBatch(hidden.contiguous(), torch.stack(ts), torch.stack(texts))


def cogvideox_rotary(
    transformer: nn.Module, latent_frames: int, latent_h: int, latent_w: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The 3D rotary tables the CogVideoX pipeline builds, or None where the model has none."""
    config: Any = transformer.config
    if not config.use_rotary_positional_embeddings:
        return None
    p, p_t = config.patch_size, config.patch_size_t
    grid = (latent_h // p, latent_w // p)
    base_w, base_h = config.sample_width // p, config.sample_height // p
    if p_t is None:
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=get_resize_crop_region_for_grid(grid, base_w, base_h),
            grid_size=grid,
            temporal_size=latent_frames,
        )
    else:
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=None,
            grid_size=grid,
            temporal_size=(latent_frames + p_t - 1) // p_t,
            grid_type="slice",
            max_size=(base_h, base_w),
        )
    return cos, sin


def run_transformer(family: ModelFamily, transformer: nn.Module, batch: NoisyBatch) -> torch.Tensor:
    """The transformer's prediction for ``batch`` (same layout as ``batch.hidden_states``)."""
    if family is ModelFamily.WAN:
        out = transformer(
            hidden_states=batch.hidden_states,
            timestep=batch.timestep,
            encoder_hidden_states=batch.text,
            return_dict=False,
        )
    else:
        out = transformer(
            hidden_states=batch.hidden_states,
            encoder_hidden_states=batch.text,
            timestep=batch.timestep,
            image_rotary_emb=batch.rotary,
            return_dict=False,
        )
    return out[0]
