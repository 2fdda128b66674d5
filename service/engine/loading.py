"""Load a diffusers pipeline directory onto a checked device, and read the rules it imposes.

The result is a standard diffusers pipeline (``WanPipeline`` or ``CogVideoXPipeline``), so
users can call it from their own diffusers code. A transformer directory that holds
``qvgen_packed.safetensors`` (format v1, ``docs/checkpoint-format.md``) is built by
``service.kernels.packed_transformer.load_packed_transformer``: on the meta device, with
``W4A4Linear`` layers, a strict key check and the timestep-group hook installed. Any other
transformer directory is a plain diffusers one and loads in the target dtype.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from diffusers import CogVideoXPipeline, WanPipeline

from qvgen.checkpoint import is_packed_dir
from service.engine.environment import RuntimeTarget, resolve_target
from service.engine.limits import ModelFamily, ModelGeometry
from service.kernels.packed_transformer import load_packed_transformer

logger = logging.getLogger(__name__)

MODEL_INDEX_FILE = "model_index.json"

# The pipelines' own size checks (``check_inputs``), on top of VAE factor × patch size.
_PIPELINE_SIZE_CHECK = {ModelFamily.WAN: 16, ModelFamily.COGVIDEOX: 8}
# Wan's text encoder was trained on 512 tokens; the pipeline pads every prompt to this length.
_WAN_TEXT_TOKENS = 512

# A loaded ``WanPipeline`` or ``CogVideoXPipeline``. diffusers registers pipeline components at
# run time (``register_modules``), so static types know none of them: ``Any`` at this seam.
VideoPipeline: TypeAlias = Any

_PIPELINE_CLASSES: dict[ModelFamily, Any] = {
    ModelFamily.WAN: WanPipeline,
    ModelFamily.COGVIDEOX: CogVideoXPipeline,
}


@dataclass(frozen=True)
class MemoryOptions:
    """Trade speed for GPU memory on large models (both no-ops on CPU).

    offload_text_encoder: after each prompt encoding, move the text encoder to CPU memory
        (UMT5-XXL holds ~11 GiB in bf16 that the denoising loop never reads); it moves back
        for the next job's encoding.
    vae_tiling: decode the latents in overlapping spatial tiles (diffusers' ``enable_tiling``),
        bounding the decoder's activation memory at some extra time.
    """

    offload_text_encoder: bool = False
    vae_tiling: bool = False


def detect_family(model_dir: str | Path) -> ModelFamily:
    """The pipeline family named by ``model_index.json`` in ``model_dir``."""
    index_path = Path(model_dir) / MODEL_INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found: not a diffusers pipeline directory")
    class_name = json.loads(index_path.read_text()).get("_class_name")
    try:
        return ModelFamily(class_name)
    except ValueError:
        supported = sorted(f.value for f in ModelFamily)
        raise ValueError(
            f"{index_path}: pipeline class {class_name!r} is not supported; supported: {supported}"
        ) from None


def load_pipeline_on(
    model_dir: str | Path, target: RuntimeTarget, options: MemoryOptions | None = None
) -> VideoPipeline:
    """Load ``model_dir`` onto an already checked ``target``; see ``load_pipeline``."""
    options = options or MemoryOptions()
    model_dir = Path(model_dir)
    family = detect_family(model_dir)
    pipeline_class = _PIPELINE_CLASSES[family]
    transformer_dir = model_dir / "transformer"
    # A component passed to from_pretrained replaces the one model_index.json names.
    components: dict[str, Any] = {}
    if is_packed_dir(transformer_dir):
        components["transformer"] = load_packed_transformer(
            transformer_dir, device=target.device, dtype=target.dtype
        )
    pipeline = pipeline_class.from_pretrained(model_dir, dtype=target.dtype, **components)
    pipeline.to(target.device)
    if options.vae_tiling:
        pipeline.vae.enable_tiling()
    logger.info(
        "loaded %s from %s on %s (%s), %s transformer",
        family.value,
        model_dir,
        target.device,
        target.dtype,
        "packed" if components else "plain",
    )
    return pipeline


def load_pipeline(
    model_dir: str | Path, device: str = "cpu", options: MemoryOptions | None = None
) -> VideoPipeline:
    """Check ``device``, then load the diffusers pipeline in ``model_dir`` onto it.

    Runs in bfloat16 on CUDA and float32 on CPU. Returns the diffusers pipeline object itself.
    """
    return load_pipeline_on(model_dir, resolve_target(device), options)


def pipeline_geometry(pipeline: VideoPipeline, family: ModelFamily) -> ModelGeometry:
    """Size multiple, frame step and prompt length read from a loaded pipeline's configs."""
    spatial = int(pipeline.vae_scale_factor_spatial)
    temporal = int(pipeline.vae_scale_factor_temporal)
    config = pipeline.transformer.config
    if family is ModelFamily.WAN:
        patch = math.lcm(int(config.patch_size[1]), int(config.patch_size[2]))
        frame_step = temporal
        text_tokens = min(_WAN_TEXT_TOKENS, int(pipeline.tokenizer.model_max_length))
    else:
        patch = int(config.patch_size)
        # The CogVideoX VAE decodes an odd first group then pairs of latent frames: an even
        # latent count would decode to more frames than asked for.
        frame_step = 2 * temporal
        text_tokens = int(config.max_text_seq_length)
    return ModelGeometry(
        size_multiple=math.lcm(spatial * patch, _PIPELINE_SIZE_CHECK[family]),
        frame_step=frame_step,
        text_tokens=text_tokens,
    )
