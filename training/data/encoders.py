"""VAE and text encoding of training clips, exactly as the diffusers pipelines expect them.

Latents are stored in the pipelines' *normalised* space, the space the transformer denoises:

* Wan 2.1: z = (μ − m) / σ with the VAE config's per-channel ``latents_mean`` m and
  ``latents_std`` σ (the pipeline decodes with z·σ + m);
* CogVideoX: z = μ · ``scaling_factor`` (the pipeline decodes with z / scaling_factor);

where μ is the mean of the VAE posterior. The mean, not a sample: the cache then holds one
deterministic latent per clip, and the diffusion noise added in training dominates the
posterior's spread (its σ is ~1e-2 of the latent range for both VAEs).

Text embeddings come from the pipeline's own ``encode_prompt`` at the pipeline's prompt length,
so training sees the very tensors inference will feed the transformer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import CogVideoXPipeline, WanPipeline

from qvgen.family import WAN_TEXT_TOKENS, ModelFamily, detect_family

logger = logging.getLogger(__name__)

_PIPELINES: dict[ModelFamily, Any] = {
    ModelFamily.WAN: WanPipeline,
    ModelFamily.COGVIDEOX: CogVideoXPipeline,
}


class ClipEncoder:
    """The pipeline's VAE and text encoder (no transformer loaded), on one device."""

    def __init__(self, model_dir: str | Path, device: torch.device, dtype: torch.dtype) -> None:
        self.family = detect_family(model_dir)
        self.device = device
        self.dtype = dtype
        pipeline_class = _PIPELINES[self.family]
        self.pipeline = pipeline_class.from_pretrained(model_dir, transformer=None, dtype=dtype)
        self.pipeline.vae.to(device).eval()
        self.pipeline.text_encoder.to(device).eval()
        self.text_tokens = self._text_tokens(model_dir)

    def _text_tokens(self, model_dir: str | Path) -> int:
        if self.family is ModelFamily.WAN:
            return min(WAN_TEXT_TOKENS, int(self.pipeline.tokenizer.model_max_length))
        config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
        return int(config["max_text_seq_length"])

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] in [−1, 1] → normalised latents float32 [C, F, h, w]."""
        vae = self.pipeline.vae
        x = video.unsqueeze(0).to(self.device, self.dtype)
        mean = vae.encode(x).latent_dist.mode()
        if self.family is ModelFamily.WAN:
            shape = (1, vae.config.z_dim, 1, 1, 1)
            m = torch.tensor(vae.config.latents_mean, device=mean.device).view(shape)
            s = torch.tensor(vae.config.latents_std, device=mean.device).view(shape)
            z = (mean.float() - m) / s
        else:
            z = mean.float() * float(vae.config.scaling_factor)
        return z[0].float().cpu()

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Prompt embeddings float32 [L, D], L the pipeline's prompt length."""
        embeds, _ = self.pipeline.encode_prompt(
            prompt=prompt,
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=self.text_tokens,
            device=self.device,
            dtype=self.dtype,
        )
        return embeds[0].float().cpu()

    def close(self) -> None:
        """Free the encoders: training never needs them again."""
        del self.pipeline
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
