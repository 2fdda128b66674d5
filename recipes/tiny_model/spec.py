"""The architecture of qvgen-tiny: a Wan 2.1 pipeline sized for a 2-core CPU.

Default clip 17 frames of 64×64 (the synthetic task's clips). The VAE compresses ×4 in space and
×4 in time, so a clip is a latent of 5 frames × 16 × 16; the transformer's (1, 2, 2) patches make
that 5 × 8 × 8 = 320 tokens. The tokenizer knows the task's 27 words (``vocabulary()``), so
every prompt of the task tokenizes without ``<unk>``.
"""

from __future__ import annotations

from qvgen.tiny_pipelines import TextEncoderSize, TinyPipelineSpec, TransformerSize, VaeSize
from training.synthetic.vocabulary import vocabulary

FRAMES = 17
SIDE = 64
FPS = 8


def task_words() -> tuple[str, ...]:
    """The synthetic task's words in a fixed (sorted) order: token ids never depend on hashing."""
    return tuple(sorted(vocabulary()))


def tiny_spec() -> TinyPipelineSpec:
    """The shipped model's sizes (see the module docstring)."""
    words = task_words()
    return TinyPipelineSpec(
        text_encoder=TextEncoderSize(
            vocab_size=32,
            d_model=64,
            num_layers=2,
            num_heads=4,
            d_kv=16,
            d_ff=128,
            max_tokens=16,
            words=words,
        ),
        transformer=TransformerSize(
            num_layers=6, num_heads=4, head_dim=32, ffn_dim=512, time_freq_dim=64
        ),
        vae=VaeSize(base_channels=16, channel_mult=(1, 2, 2), latent_channels=8, temporal_factor=4),
        patch_size=2,
        flow_shift=3.0,
    )


def toy_spec() -> TinyPipelineSpec:
    """The same architecture at the smallest sizes: tests run the recipe with it in seconds."""
    return TinyPipelineSpec(
        text_encoder=TextEncoderSize(
            vocab_size=32,
            d_model=16,
            num_layers=1,
            num_heads=2,
            d_kv=8,
            d_ff=32,
            words=task_words(),
        ),
        transformer=TransformerSize(num_layers=1, num_heads=2, head_dim=12, ffn_dim=32),
        vae=VaeSize(base_channels=4, channel_mult=(1, 2, 2), latent_channels=4, temporal_factor=4),
    )
