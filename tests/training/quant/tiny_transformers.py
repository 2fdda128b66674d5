"""Tiny seeded diffusers transformers (real classes) and inputs for quantization tests."""

from __future__ import annotations

import torch
from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel


def tiny_wan(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def wan_inputs(batch: int = 2, seed: int = 1, timestep: float = 500.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 3, 8, 8, generator=g),
        "timestep": torch.full((batch,), timestep),
        "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
    }


def tiny_cogvideox(seed: int = 0) -> CogVideoXTransformer3DModel:
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=16,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        max_text_seq_length=6,
        use_rotary_positional_embeddings=False,
    ).eval()


def cogvideox_inputs(batch: int = 2, seed: int = 1, timestep: int = 500) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 3, 4, 8, 8, generator=g),
        "timestep": torch.full((batch,), timestep, dtype=torch.long),
        "encoder_hidden_states": torch.randn(batch, 6, 16, generator=g),
    }
