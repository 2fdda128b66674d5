"""``train_base``: the from-scratch recipe of qvgen-tiny, from a seed to a pipeline dir, in one
command or in several.

Output directory::

    recipe.json           the RecipeConfig that ran
    recipe_log.jsonl      one line per step of each stage run here (loss terms, gradient norm, lr)
    encoders/             VAE (latent mean/std in its config), text encoder, tokenizer (``encoders``)
    transformer_state/    the transformer stage where this command left it (``flow_state``)
    pipeline/             the diffusers WanPipeline, weights in bfloat16 (``models/qvgen-tiny``),
                          once the transformer stage has ended

Steps: build the seeded pipeline (``qvgen.tiny_pipelines``); render the training clips; train
the VAE (``vae_stage``); round VAE and text encoder to bfloat16, the precision they ship in, so
that the latents and prompt embeddings the transformer trains on are the ones inference computes;
normalise the latents; train the transformer (``flow_stage``); save.

A ``RunScope`` splits this over commands: ``vae_only`` stops after ``encoders/``; ``vae_from``
loads the encoders of an earlier run (or any pipeline directory) instead of training the VAE, so
its ``--vae-*`` settings are unused; ``piece_seconds`` pauses the transformer stage, and
``resume_transformer`` continues it in a new run directory with the same recipe. Pieces give
the transformer the weights one long run would (on the CPU exactly; ``flow_state``).

Deterministic for a seed on a given device: every random draw comes from generators seeded from
``RecipeConfig.seed`` (on CUDA up to the non-determinism of its atomics-based kernels).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qvgen.tiny_pipelines import tiny_wan_pipeline
from recipes.tiny_model.clips import ClipSet, render_clips
from recipes.tiny_model.config import CONFIG_FILE, PIPELINE_DIR, RecipeConfig, RunScope, SpecName
from recipes.tiny_model.encoders import (
    ENCODERS_DIR,
    EncoderSource,
    check_same_clips,
    find_encoders,
    fingerprint,
    load_encoders,
    save_encoders,
)
from recipes.tiny_model.flow_stage import FlowData, StageEnd, prompt_table, train_transformer
from recipes.tiny_model.flow_state import STATE_DIR, FlowState, SavedState, read_state
from recipes.tiny_model.progress import LOG_FILE, JsonlLog
from recipes.tiny_model.spec import tiny_spec, toy_spec
from recipes.tiny_model.vae_stage import (
    normalise_latents,
    posterior_means,
    set_latent_statistics,
    train_vae,
)

logger = logging.getLogger(__name__)

__all__ = ["PIPELINE_DIR", "train_base"]


def _round_to_bf16(module: nn.Module) -> None:
    """Round every parameter to bfloat16 and back: float32 compute, shipped precision."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def _check_new_run(out: Path) -> None:
    for name in (CONFIG_FILE, ENCODERS_DIR, STATE_DIR, PIPELINE_DIR):
        if (out / name).exists():
            raise ValueError(f"{out / name} exists: write a new run to a new --out")


def _sources(
    pipeline: Any, config: RecipeConfig, scope: RunScope, device: torch.device
) -> tuple[EncoderSource | None, SavedState | None]:
    """Check and load what this run starts from: encoders to reuse, a state to resume."""
    saved = None
    if scope.resume_transformer is not None:
        saved = read_state(scope.resume_transformer, config, device)
    path, flag = scope.vae_from, "--vae-from"
    if scope.resume_transformer is not None:
        path, flag = scope.resume_transformer, "--resume-transformer"
    if path is None:
        return None, None
    source = find_encoders(path, flag)
    check_same_clips(source, config, flag)
    load_encoders(pipeline, source, config.spec.value, flag)
    if saved is not None:
        saved.check_encoders(fingerprint(pipeline))
    return source, saved


def _latents(
    pipeline: Any,
    clips: ClipSet,
    source: EncoderSource | None,
    config: RecipeConfig,
    device: torch.device,
    log: JsonlLog,
) -> torch.Tensor:
    """The VAE stage, or its result loaded from ``source``: the clips' normalised latents."""
    if source is not None:
        log.write({"stage": "vae", "loaded_from": str(source.directory)})
        logger.info("VAE stage skipped (--vae-* settings unused): encoders of %s", source.directory)
        return normalise_latents(pipeline.vae, posterior_means(pipeline.vae, clips, device))
    train_vae(pipeline.vae, clips, config, device, log)
    _round_to_bf16(pipeline.vae)
    _round_to_bf16(pipeline.text_encoder)
    return set_latent_statistics(pipeline.vae, posterior_means(pipeline.vae, clips, device))


def _transformer_stage(
    pipeline: Any,
    data: FlowData,
    saved: SavedState | None,
    config: RecipeConfig,
    scope: RunScope,
    device: torch.device,
    log: JsonlLog,
) -> tuple[StageEnd, FlowState]:
    state = FlowState(pipeline.transformer, config, device)
    if saved is not None:
        state.restore(saved)
        log.write({"stage": "transformer", "resumed_from": str(saved.run_dir), "at": state.step})
    end = train_transformer(state, data, config, log, scope.piece_seconds)
    return end, state


def train_base(
    config: RecipeConfig, out: Path, device: torch.device, scope: RunScope | None = None
) -> Path | None:
    """Run one command of the recipe into ``out`` (must not hold a run); returns the pipeline
    directory, or None when this command ends before it (``vae_only``, a paused piece)."""
    scope = scope or RunScope()
    scope.check(config)
    _check_new_run(out)
    torch.manual_seed(config.seed)
    spec = tiny_spec() if config.spec is SpecName.TINY else toy_spec()
    pipeline = tiny_wan_pipeline(config.seed, spec)
    source, saved = _sources(pipeline, config, scope, device)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out)
    clips = render_clips(config.data_seed, config.clips, config.frames, config.side, config.workers)
    log = JsonlLog(out / LOG_FILE)
    try:
        latents = _latents(pipeline, clips, source, config, device, log)
        encoders = fingerprint(pipeline)
        save_encoders(pipeline, out / ENCODERS_DIR)
        if scope.vae_only:
            logger.info("wrote the encoders to %s (--vae-only)", out / ENCODERS_DIR)
            return None
        texts = prompt_table(pipeline, clips.prompts, device)
        shift = float(pipeline.scheduler.config.shift)
        data = FlowData.build(latents, texts, shift, device)
        end, state = _transformer_stage(pipeline, data, saved, config, scope, device, log)
        state.save(out / STATE_DIR, config, encoders)
    finally:
        log.close()
    if end is StageEnd.PAUSED:
        logger.info(
            "transformer paused at step %d of %d: continue with --resume-transformer %s",
            state.step,
            state.total,
            out,
        )
        return None
    pipeline.transformer = state.ema.cpu()
    pipeline.to("cpu", torch.bfloat16)
    target = out / PIPELINE_DIR
    pipeline.save_pretrained(target)
    logger.info("wrote the qvgen-tiny pipeline to %s", target)
    return target
