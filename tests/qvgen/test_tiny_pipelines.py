from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import CogVideoXPipeline, DiffusionPipeline, WanPipeline
from safetensors.torch import load_file

from qvgen.tiny_pipelines import (
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    TextEncoderSize,
    TinyPipelineSpec,
    TransformerSize,
    VaeSize,
    build_tiny_cogvideox,
    build_tiny_wan,
    build_tokenizer,
)

FRAMES, SIZE = 9, 16


def _run(pipeline: DiffusionPipeline, seed: int) -> torch.Tensor:
    output = pipeline(
        prompt="a red cat runs",
        negative_prompt="blurry",
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=TextEncoderSize().max_tokens,
        output_type="pt",
    )
    return output.frames


@pytest.mark.parametrize(
    ("fixture", "pipeline_class"),
    [("tiny_wan_dir", WanPipeline), ("tiny_cogvideox_dir", CogVideoXPipeline)],
)
def test_loads_back_and_generates(
    fixture: str, pipeline_class: type[DiffusionPipeline], request: pytest.FixtureRequest
) -> None:
    directory: Path = request.getfixturevalue(fixture)
    pipeline = pipeline_class.from_pretrained(directory, dtype=torch.float32)
    assert type(pipeline) is pipeline_class
    frames = _run(pipeline, seed=0)
    assert frames.shape == (1, FRAMES, 3, SIZE, SIZE)
    assert torch.isfinite(frames).all()
    assert torch.equal(frames, _run(pipeline, seed=0))
    assert not torch.equal(frames, _run(pipeline, seed=1))


@pytest.mark.parametrize("fixture", ["tiny_wan_dir", "tiny_cogvideox_dir"])
def test_vae_latents_match_the_pipeline_scale_factors(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    pipeline = DiffusionPipeline.from_pretrained(request.getfixturevalue(fixture))
    vae = TinyPipelineSpec().vae
    assert pipeline.vae_scale_factor_spatial == vae.spatial_factor
    assert pipeline.vae_scale_factor_temporal == vae.temporal_factor
    video = torch.zeros(1, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        latents = pipeline.vae.encode(video).latent_dist.mean
    expected_frames = (FRAMES - 1) // vae.temporal_factor + 1
    expected_side = SIZE // vae.spatial_factor
    assert tuple(latents.shape) == (
        1,
        vae.latent_channels,
        expected_frames,
        expected_side,
        expected_side,
    )


def _transformer_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "transformer" / "diffusion_pytorch_model.safetensors")


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    first = _transformer_weights(build_tiny_wan(tmp_path / "a", seed=3))
    again = _transformer_weights(build_tiny_wan(tmp_path / "b", seed=3))
    other = _transformer_weights(build_tiny_wan(tmp_path / "c", seed=4))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_building_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_cogvideox(tmp_path, seed=0)
    assert torch.equal(torch.rand(4), expected)


def test_spec_sizes_reach_the_configs(tmp_path: Path) -> None:
    spec = TinyPipelineSpec(
        text_encoder=TextEncoderSize(d_model=24, vocab_size=128),
        transformer=TransformerSize(num_layers=3, num_heads=3, head_dim=12, ffn_dim=48),
    )
    pipeline = WanPipeline.from_pretrained(build_tiny_wan(tmp_path, seed=0, spec=spec))
    config = pipeline.transformer.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (3, 3, 12)
    assert config.text_dim == 24
    assert len(pipeline.transformer.blocks) == 3
    assert pipeline.text_encoder.config.vocab_size == 128
    assert len(pipeline.tokenizer) == 128


def test_tokenizer_is_word_level_with_t5_specials() -> None:
    tokenizer = build_tokenizer(TextEncoderSize(max_tokens=8))
    ids = tokenizer("A red CAT zebra", padding="max_length", max_length=8).input_ids
    vocab = tokenizer.get_vocab()
    assert (vocab[PAD_TOKEN], vocab[EOS_TOKEN], vocab[UNK_TOKEN]) == (0, 1, 2)
    assert ids[:5] == [vocab["a"], vocab["red"], vocab["cat"], vocab[UNK_TOKEN], vocab[EOS_TOKEN]]
    assert ids[5:] == [vocab[PAD_TOKEN]] * 3


@pytest.mark.parametrize(
    "build",
    [
        lambda: TransformerSize(head_dim=7),
        lambda: TransformerSize(num_layers=0),
        lambda: TextEncoderSize(vocab_size=10),
        lambda: VaeSize(channel_mult=(1, 2), temporal_factor=4),
    ],
)
def test_bad_sizes_are_refused(build: object) -> None:
    with pytest.raises(ValueError, match="must"):
        build()  # type: ignore[operator]
