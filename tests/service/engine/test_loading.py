from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import CogVideoXPipeline, WanPipeline

from qvgen.family import MODEL_INDEX_FILE, ModelFamily, detect_family
from service.engine.loading import MemoryOptions, load_pipeline, pipeline_geometry
from service.engine.rules import ModelGeometry


def test_families_are_read_from_model_index(tiny_wan_dir: Path, tiny_cogvideox_dir: Path) -> None:
    assert detect_family(tiny_wan_dir) is ModelFamily.WAN
    assert detect_family(tiny_cogvideox_dir) is ModelFamily.COGVIDEOX


def test_unsupported_pipeline_class_is_named(tmp_path: Path) -> None:
    (tmp_path / MODEL_INDEX_FILE).write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match=r"'FluxPipeline' is not supported; supported: \["):
        detect_family(tmp_path)


def test_model_index_without_class_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / MODEL_INDEX_FILE).write_text(json.dumps({"vae": ["diffusers", "AutoencoderKLWan"]}))
    with pytest.raises(ValueError, match="pipeline class None is not supported"):
        detect_family(tmp_path)


def test_a_directory_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline directory"):
        load_pipeline(tmp_path)


def test_device_is_checked_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device 'tpu'"):
        load_pipeline(tmp_path, device="tpu")


@pytest.mark.parametrize(
    ("fixture", "pipeline_class", "geometry"),
    [
        # Wan: VAE ×4 · patch 2 = 8, raised to the pipeline's own multiple of 16; 4k + 1 frames.
        (
            "tiny_wan_dir",
            WanPipeline,
            ModelGeometry(size_multiple=16, frame_step=4, text_tokens=16),
        ),
        # CogVideoX: 8, the pipeline's check is 8 too; odd latent counts → 8k + 1 frames.
        (
            "tiny_cogvideox_dir",
            CogVideoXPipeline,
            ModelGeometry(size_multiple=8, frame_step=8, text_tokens=16),
        ),
    ],
)
def test_plain_pipelines_load_as_diffusers_objects_with_derived_geometry(
    fixture: str,
    pipeline_class: type,
    geometry: ModelGeometry,
    request: pytest.FixtureRequest,
) -> None:
    directory = request.getfixturevalue(fixture)
    pipeline = load_pipeline(directory, options=MemoryOptions(vae_tiling=True))
    assert type(pipeline) is pipeline_class
    assert pipeline.transformer.dtype == torch.float32
    assert pipeline.vae.use_tiling
    assert pipeline_geometry(pipeline, detect_family(directory)) == geometry


def test_vae_tiling_is_off_by_default(tiny_wan_dir: Path) -> None:
    assert not load_pipeline(tiny_wan_dir).vae.use_tiling
