"""Load a diffusers pipeline directory onto a checked device, and read the rules it imposes.

The result is a standard diffusers pipeline (``WanPipeline`` or ``CogVideoXPipeline``), so
users can call it from their own diffusers code. A transformer directory that holds
``qvgen_packed.safetensors`` (format v1, ``docs/checkpoint-format.md``) is built by
``service.kernels.packed_transformer.load_packed_transformer``: on the meta device, with
``LowBitLinear`` layers, a strict key check and the timestep-group hook installed. Any other
transformer directory is a plain diffusers one and loads in the target dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from diffusers import CogVideoXPipeline, WanPipeline

from qvgen.checkpoint import is_packed_dir
from qvgen.family import WAN_TEXT_TOKENS, ModelFamily, PipelineGeometry, detect_family
from service.engine.environment import RuntimeTarget, resolve_target
from service.engine.rules import ModelGeometry
from service.kernels.packed_transformer import load_packed_transformer

logger = logging.getLogger(__name__)


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
        # Fused q/k/v: exact against separate layers (tests/service/kernels/
        # test_fused_projections.py, on the H200 too) and 0.8 % faster there (BENCHMARKS.md);
        # CUDA only, since no CPU run has measured it. The quantization fused
        # into the norms and GELU (test_wan_block_prologues.py) is exact on the H200 as well,
        # but under torch.compile it made the Wan 1.3B step 0.6 % slower there (BENCHMARKS.md,
        # the end-to-end section of commit 874ec03): off.
        components["transformer"] = load_packed_transformer(
            transformer_dir,
            device=target.device,
            dtype=target.dtype,
            fuse_projections=target.device.type == "cuda",
            fuse_prologues=False,
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
    """Size multiple, frame step and prompt length of a loaded pipeline (``qvgen.family``)."""
    shape = PipelineGeometry.from_configs(family, pipeline.vae.config, pipeline.transformer.config)
    if family is ModelFamily.WAN:
        text_tokens = min(WAN_TEXT_TOKENS, int(pipeline.tokenizer.model_max_length))
    else:
        text_tokens = int(pipeline.transformer.config.max_text_seq_length)
    return ModelGeometry(
        size_multiple=shape.size_multiple, frame_step=shape.frame_step, text_tokens=text_tokens
    )
