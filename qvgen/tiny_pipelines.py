"""Complete, seeded, offline diffusers pipelines of any size, built from the real classes.

Tests across the project need a Wan 2.1 and a CogVideoX pipeline that load through the real
``from_pretrained`` code and generate in seconds on a CPU; later work needs a larger "qvgen-tiny"
model built the same way. Nothing here downloads anything: the tokenizer is a word-level
``tokenizers.Tokenizer`` over a fixed vocabulary, and every model starts from random weights
drawn from ``seed``.

The sizes live in frozen dataclasses (``TinyPipelineSpec``); the defaults give the smallest
pipelines the architectures allow that still generate 9 frames of 16×16:

* Wan: VAE spatial ×4 and temporal ×4 (like the real ×8/×4, two stages instead of three), patch
  (1, 2, 2) → width/height multiples of 16, frame counts 4k + 1.
* CogVideoX: VAE spatial ×4 and temporal ×4, patch 2 → multiples of 16 (the pipeline's ×8 check
  included), frame counts 8k + 1 (the VAE decodes an odd number of latent frames).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
_SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2 as in T5

# Words that test prompts use; the rest of the vocabulary is filler ("tok17", ...).
_WORDS = (
    "a", "an", "the", "of", "on", "in", "and", "with", "at", "by", "over", "under",
    "cat", "dog", "bird", "fish", "horse", "car", "boat", "tree", "river", "sea", "sky",
    "city", "street", "forest", "mountain", "beach", "rain", "snow", "sun", "moon", "night",
    "red", "blue", "green", "white", "black", "small", "big", "fast", "slow", "bright", "dark",
    "runs", "flies", "swims", "walks", "jumps", "sleeps", "drives", "falls", "shines", "video",
    "blurry", "low", "quality", "static",
)  # fmt: skip


@dataclass(frozen=True)
class TextEncoderSize:
    """T5 / UMT5 encoder: ``d_model`` is also the transformer's text embedding width.

    ``words`` are the tokenizer's real words (ids 3, 4, … after the special tokens); the rest of
    the vocabulary is filler. A model trained on a task passes that task's words.
    """

    vocab_size: int = 96
    d_model: int = 16
    num_layers: int = 1
    num_heads: int = 2
    d_kv: int = 8
    d_ff: int = 32
    max_tokens: int = 16  # the pipelines pad / truncate prompts to this many tokens
    words: tuple[str, ...] = _WORDS

    def __post_init__(self) -> None:
        minimum = len(_SPECIAL_TOKENS) + len(self.words)
        if self.vocab_size < minimum:
            raise ValueError(f"vocab_size must be ≥ {minimum}, got {self.vocab_size}")
        clashes = sorted(set(self.words) & set(_SPECIAL_TOKENS))
        if len(set(self.words)) != len(self.words) or clashes:
            raise ValueError(
                f"words must be distinct and not special tokens {_SPECIAL_TOKENS}, got "
                f"{len(self.words) - len(set(self.words))} repeats and {clashes}"
            )


@dataclass(frozen=True)
class TransformerSize:
    """Denoising transformer: inner width = ``num_heads · head_dim``."""

    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 16
    ffn_dim: int = 64
    time_freq_dim: int = 32

    def __post_init__(self) -> None:
        # Wan splits each head into (t, h, w) rotary parts of even width; 6 divides the
        # smallest head dim for which every part is even and non-empty.
        if self.head_dim < 6 or self.head_dim % 2:
            raise ValueError(f"head_dim must be even and ≥ 6, got {self.head_dim}")
        if self.num_layers < 1 or self.num_heads < 1:
            raise ValueError(
                f"num_layers and num_heads must be ≥ 1, got {self.num_layers}, {self.num_heads}"
            )


@dataclass(frozen=True)
class VaeSize:
    """Video autoencoder: spatial ×2^(len(channel_mult) − 1), temporal ×``temporal_factor``."""

    base_channels: int = 8
    channel_mult: tuple[int, ...] = (1, 2, 2)
    latent_channels: int = 4
    temporal_factor: int = 4

    @property
    def spatial_factor(self) -> int:
        return int(2 ** (len(self.channel_mult) - 1))

    def __post_init__(self) -> None:
        stages = len(self.channel_mult) - 1
        allowed = [2**i for i in range(stages + 1)]
        if self.temporal_factor not in allowed:
            raise ValueError(
                f"temporal_factor must be one of {allowed} for {stages} downsampling stages, "
                f"got {self.temporal_factor}"
            )


@dataclass(frozen=True)
class TinyPipelineSpec:
    """Every size of a tiny pipeline; the defaults generate 9×16×16 in about a second on CPU."""

    text_encoder: TextEncoderSize = field(default_factory=TextEncoderSize)
    transformer: TransformerSize = field(default_factory=TransformerSize)
    vae: VaeSize = field(default_factory=VaeSize)
    patch_size: int = 2
    flow_shift: float = 3.0  # Wan 2.1's shift for 480p


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw initial weights from ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_tokenizer(size: TextEncoderSize) -> PreTrainedTokenizerFast:
    """Lower-casing, whitespace-split, word-level tokenizer that appends ``</s>`` like T5."""
    words = list(size.words) + [
        f"tok{i}" for i in range(size.vocab_size - len(_SPECIAL_TOKENS) - len(size.words))
    ]
    vocab = {token: i for i, token in enumerate((*_SPECIAL_TOKENS, *words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, vocab[EOS_TOKEN])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=size.max_tokens,
    )


def _t5_kwargs(size: TextEncoderSize) -> dict[str, Any]:
    return {
        "vocab_size": size.vocab_size,
        "d_model": size.d_model,
        "d_kv": size.d_kv,
        "d_ff": size.d_ff,
        "num_layers": size.num_layers,
        "num_heads": size.num_heads,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "dropout_rate": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


# Returned as Any: mypy resolves diffusers' pipeline classes to its dummy placeholder objects,
# which have no ``save_pretrained``.
def _wan_pipeline(spec: TinyPipelineSpec) -> Any:
    te, tr, vae = spec.text_encoder, spec.transformer, spec.vae
    stages = len(vae.channel_mult) - 1
    temporal_stages = vae.temporal_factor.bit_length() - 1
    # Wan compresses time in the *last* stages (real config: [False, True, True]).
    temporal = [i >= stages - temporal_stages for i in range(stages)]
    return WanPipeline(
        tokenizer=build_tokenizer(te),
        text_encoder=UMT5EncoderModel(UMT5Config(**_t5_kwargs(te))),
        vae=AutoencoderKLWan(
            base_dim=vae.base_channels,
            z_dim=vae.latent_channels,
            dim_mult=list(vae.channel_mult),
            num_res_blocks=1,
            temperal_downsample=temporal,
            latents_mean=[0.0] * vae.latent_channels,
            latents_std=[1.0] * vae.latent_channels,
            # Not derived from dim_mult / temperal_downsample by diffusers: set them to match.
            scale_factor_spatial=vae.spatial_factor,
            scale_factor_temporal=vae.temporal_factor,
        ),
        transformer=WanTransformer3DModel(
            patch_size=(1, spec.patch_size, spec.patch_size),
            num_attention_heads=tr.num_heads,
            attention_head_dim=tr.head_dim,
            in_channels=vae.latent_channels,
            out_channels=vae.latent_channels,
            text_dim=te.d_model,
            freq_dim=tr.time_freq_dim,
            ffn_dim=tr.ffn_dim,
            num_layers=tr.num_layers,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=spec.flow_shift),
    )


def _cogvideox_pipeline(spec: TinyPipelineSpec) -> Any:
    te, tr, vae = spec.text_encoder, spec.transformer, spec.vae
    channels = tuple(vae.base_channels * m for m in vae.channel_mult)
    return CogVideoXPipeline(
        tokenizer=build_tokenizer(te),
        text_encoder=T5EncoderModel(T5Config(**_t5_kwargs(te))),
        vae=AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * len(channels),
            up_block_types=("CogVideoXUpBlock3D",) * len(channels),
            block_out_channels=channels,
            latent_channels=vae.latent_channels,
            layers_per_block=1,
            norm_num_groups=min(4, vae.base_channels),
            temporal_compression_ratio=vae.temporal_factor,
            sample_height=64,
            sample_width=64,
        ),
        transformer=CogVideoXTransformer3DModel(
            num_attention_heads=tr.num_heads,
            attention_head_dim=tr.head_dim,
            in_channels=vae.latent_channels,
            out_channels=vae.latent_channels,
            time_embed_dim=tr.time_freq_dim,
            text_embed_dim=te.d_model,
            num_layers=tr.num_layers,
            sample_width=16 // vae.spatial_factor,
            sample_height=16 // vae.spatial_factor,
            sample_frames=9,
            patch_size=spec.patch_size,
            temporal_compression_ratio=vae.temporal_factor,
            max_text_seq_length=te.max_tokens,
        ),
        # CogVideoX-2b's scheduler settings.
        scheduler=CogVideoXDDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            prediction_type="v_prediction",
            rescale_betas_zero_snr=True,
            set_alpha_to_one=True,
            snr_shift_scale=3.0,
            timestep_spacing="trailing",
        ),
    )


def tiny_wan_pipeline(seed: int = 0, spec: TinyPipelineSpec | None = None) -> Any:
    """A seeded ``WanPipeline`` in memory (float32), for code that trains it before saving."""
    with _seeded(seed):
        return _wan_pipeline(spec or TinyPipelineSpec())


def build_tiny_wan(
    out_dir: str | Path, seed: int = 0, spec: TinyPipelineSpec | None = None
) -> Path:
    """Save a seeded ``WanPipeline`` to ``out_dir`` (``WanPipeline.from_pretrained`` loads it)."""
    pipeline = tiny_wan_pipeline(seed, spec)
    out = Path(out_dir)
    pipeline.save_pretrained(out)
    return out


def build_tiny_cogvideox(
    out_dir: str | Path, seed: int = 0, spec: TinyPipelineSpec | None = None
) -> Path:
    """Save a seeded ``CogVideoXPipeline`` to ``out_dir`` (``CogVideoXPipeline.from_pretrained``)."""
    with _seeded(seed):
        pipeline = _cogvideox_pipeline(spec or TinyPipelineSpec())
    out = Path(out_dir)
    pipeline.save_pretrained(out)
    return out
