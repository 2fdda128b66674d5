"""The smallest real Wan 2.1 architecture and VAE the benchmarks' tests build their models from."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.random_models import VaeArchitecture, WanArchitecture

TINY_WAN = WanArchitecture(
    "tiny-wan", num_layers=1, num_heads=2, head_dim=16, ffn_dim=32, text_dim=16, freq_dim=32,
    latent_channels=4,
)  # fmt: skip
# Spatial ×4 and temporal ×4 in two stages, as qvgen.tiny_pipelines builds its Wan VAE.
TINY_VAE = VaeArchitecture(
    base_dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True),
    spatial_factor=4, temporal_factor=4, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4,
)  # fmt: skip


def tiny_wan(num_layers: int) -> WanArchitecture:
    """``TINY_WAN`` with ``num_layers`` blocks."""
    return replace(TINY_WAN, num_layers=num_layers)
