"""``train_base``: the whole from-scratch recipe of qvgen-tiny, from a seed to a pipeline dir.

Output directory::

    recipe.json           the RecipeConfig that ran
    recipe_log.jsonl      one line per step of both stages (loss terms, gradient norm, lr)
    pipeline/             the diffusers WanPipeline, weights in bfloat16 (``models/qvgen-tiny``)

Steps: build the seeded pipeline (``qvgen.tiny_pipelines``); render the training clips; train
the VAE (``vae_stage``); round VAE and text encoder to bfloat16, the precision they ship in, so
that the latents and prompt embeddings the transformer trains on are the ones inference computes;
normalise the latents; train the transformer (``flow_stage``); save.

Deterministic for a seed on a given device: every random draw comes from generators seeded from
``RecipeConfig.seed`` (on CUDA up to the non-determinism of its atomics-based kernels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from qvgen.tiny_pipelines import tiny_wan_pipeline
from training.tiny_model.clips import render_clips
from training.tiny_model.config import RecipeConfig, SpecName
from training.tiny_model.flow_stage import prompt_table, train_transformer
from training.tiny_model.progress import LOG_FILE, JsonlLog
from training.tiny_model.spec import tiny_spec, toy_spec
from training.tiny_model.vae_stage import posterior_means, set_latent_statistics, train_vae

logger = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"


def _round_to_bf16(module: nn.Module) -> None:
    """Round every parameter to bfloat16 and back: float32 compute, shipped precision."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def train_base(config: RecipeConfig, out: Path, device: torch.device) -> Path:
    """Run the recipe into ``out`` (must not hold a run); returns the pipeline directory."""
    if (out / PIPELINE_DIR).exists():
        raise ValueError(f"{out / PIPELINE_DIR} exists: write a new run to a new --out")
    out.mkdir(parents=True, exist_ok=True)
    config.save(out)
    torch.manual_seed(config.seed)
    spec = tiny_spec() if config.spec is SpecName.TINY else toy_spec()
    pipeline = tiny_wan_pipeline(config.seed, spec)
    clips = render_clips(config.data_seed, config.clips, config.frames, config.side, config.workers)
    log = JsonlLog(out / LOG_FILE)
    try:
        train_vae(pipeline.vae, clips, config, device, log)
        _round_to_bf16(pipeline.vae)
        _round_to_bf16(pipeline.text_encoder)
        latents = set_latent_statistics(pipeline.vae, posterior_means(pipeline.vae, clips, device))
        texts = prompt_table(pipeline, clips.prompts, device)
        shift = float(pipeline.scheduler.config.shift)
        pipeline.transformer = train_transformer(
            pipeline.transformer, latents, texts, shift, config, device, log
        )
    finally:
        log.close()
    pipeline.to("cpu", torch.bfloat16)
    target = out / PIPELINE_DIR
    pipeline.save_pretrained(target)
    logger.info("wrote the qvgen-tiny pipeline to %s", target)
    return target
