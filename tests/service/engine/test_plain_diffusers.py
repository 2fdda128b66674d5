"""What an exported pipeline directory (the shipped ``models/qvgen-tiny-w4a4``, written by
``qvgen export``) does in plain diffusers, exactly as ``docs/checkpoint-format.md`` states it:
every component but the packed transformer loads as usual; ``WanPipeline.from_pretrained``
loads the pipeline once qvgen's loader supplies the transformer, and then generates what the
service's engine generates; the generic ``DiffusionPipeline.from_pretrained`` does not take the
supplied transformer of a Wan pipeline in diffusers 0.42.1 (pinned), and loads it from disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import AutoTokenizer, UMT5EncoderModel

from service.engine.loading import load_pipeline
from service.kernels.packed_transformer import load_packed_transformer

EXPORTED = Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4"
# What loads with plain diffusers, not the kernels: interpreted Triton would only slow it down.
pytestmark = pytest.mark.usefixtures("reference_backend")


def test_plain_diffusers_refuses_the_packed_transformer() -> None:
    for load in (
        lambda: DiffusionPipeline.from_pretrained(EXPORTED),
        lambda: WanTransformer3DModel.from_pretrained(EXPORTED, subfolder="transformer"),
    ):
        with pytest.raises(OSError, match="diffusion_pytorch_model"):
            load()


def test_every_other_component_loads_with_plain_diffusers_and_transformers() -> None:
    assert isinstance(AutoencoderKLWan.from_pretrained(EXPORTED, subfolder="vae"), AutoencoderKLWan)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(EXPORTED, subfolder="scheduler")
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    encoder = UMT5EncoderModel.from_pretrained(EXPORTED, subfolder="text_encoder")
    assert isinstance(encoder, UMT5EncoderModel)
    tokenizer = AutoTokenizer.from_pretrained(EXPORTED, subfolder="tokenizer")
    assert tokenizer("a red circle")["input_ids"]


def test_wan_pipeline_with_qvgens_transformer_is_the_engines_pipeline() -> None:
    transformer = load_packed_transformer(EXPORTED / "transformer")
    # The engine loads in float32 on a CPU; the directory stores bfloat16 components.
    pipeline = WanPipeline.from_pretrained(EXPORTED, transformer=transformer, dtype=torch.float32)
    assert pipeline.transformer is transformer
    engine_pipeline = load_pipeline(EXPORTED, device="cpu")

    def frames(pipe: WanPipeline) -> torch.Tensor:
        generated = pipe(
            prompt="a red circle moving left on a black background",
            height=64,
            width=64,
            num_frames=5,
            num_inference_steps=1,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )
        return torch.as_tensor(generated.frames)

    assert torch.equal(frames(pipeline), frames(engine_pipeline))


def test_the_generic_loader_ignores_a_supplied_wan_transformer() -> None:
    """diffusers 0.42.1 looks up optional components (Wan's transformer is one: its pipeline
    takes two) on ``DiffusionPipeline`` instead of ``WanPipeline``, so the keyword is not taken
    as a component and the packed directory is read as a plain one."""
    transformer = load_packed_transformer(EXPORTED / "transformer")
    with pytest.raises(OSError, match="diffusion_pytorch_model"):
        DiffusionPipeline.from_pretrained(EXPORTED, transformer=transformer)
