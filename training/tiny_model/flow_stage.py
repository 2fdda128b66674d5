"""Stage 2: train the Wan transformer by flow matching on the VAE's normalised latents.

For a clean latent x₀, noise ε ~ N(0, I) and u ~ U(0, 1):

    σ = shift·u / (1 + (shift − 1)·u)          (the inference schedule's shift, 3)
    x_σ = (1 − σ)·x₀ + σ·ε,   t = 1000·σ
    L = ‖v_θ(x_σ, t, c) − (ε − x₀)‖²

which is the velocity ``FlowMatchEulerDiscreteScheduler`` integrates (x ← x + (σ' − σ)·v). The
shift puts training noise levels where inference spends its steps. The prompt c is replaced by
the empty prompt's embedding with probability ``caption_dropout``: that embedding is what
classifier-free guidance feeds as the (default, empty) negative prompt.

Text embeddings come from the pipeline's own ``encode_prompt`` at the tokenizer's length (16), so
the transformer trains on exactly the tensors the engine feeds it. The text encoder stays at its
seeded random initialisation (frozen): it is deterministic, and the 27-word task needs no
pretrained language knowledge — the transformer's cross-attention learns to read it.

The shipped weights are an exponential moving average (decay ``ema_decay``) of the trained ones.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from training.tiny_model.config import RecipeConfig
from training.tiny_model.progress import JsonlLog, StepBudget, stop_at_deadline, warmup_cosine

logger = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000


@torch.no_grad()
def prompt_table(
    pipeline: Any, prompts: tuple[str, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeddings [P, L, D] of the distinct prompts, index [N] of each clip's prompt, the empty
    prompt's embedding [L, D]), all float32 on the CPU."""
    distinct = sorted(set(prompts))
    position = {p: i for i, p in enumerate(distinct)}
    length = int(pipeline.tokenizer.model_max_length)
    pipeline.text_encoder.to(device).eval()
    embeds, _ = pipeline.encode_prompt(
        prompt=[*distinct, ""],
        do_classifier_free_guidance=False,
        num_videos_per_prompt=1,
        max_sequence_length=length,
        device=device,
        dtype=torch.float32,
    )
    embeds = embeds.float().cpu()
    index = torch.tensor([position[p] for p in prompts])
    return embeds[:-1], index, embeds[-1]


def noised(
    x0: torch.Tensor, shift: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_σ, t = 1000·σ, target velocity ε − x₀) for a batch of clean latents."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    u = torch.rand((x0.shape[0],), generator=generator, device=x0.device)
    sigma = shift * u / (1.0 + (shift - 1.0) * u)
    s = sigma.view(-1, 1, 1, 1, 1)
    return (1.0 - s) * x0 + s * eps, NUM_TRAIN_TIMESTEPS * sigma, eps - x0


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    # One foreach kernel per dtype rather than one launch per parameter.
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def train_transformer(
    transformer: nn.Module,
    latents: torch.Tensor,
    texts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    shift: float,
    config: RecipeConfig,
    device: torch.device,
    log: JsonlLog,
) -> nn.Module:
    """Train on ``latents`` [N, C, F, h, w]; returns the EMA copy (eval mode, on the CPU)."""
    table, prompt_index, empty = (t.to(device) for t in texts)
    clip_text = table[prompt_index]  # [N, L, D]: gathering once keeps the step free of indexing
    latents = latents.to(device)
    transformer.to(device).train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    budget = StepBudget(config.flow_steps, config.flow_seconds)
    optimizer = torch.optim.AdamW(
        transformer.parameters(),
        lr=config.flow_lr,
        betas=(0.9, 0.99),
        weight_decay=1e-4,
        fused=device.type == "cuda",
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, budget.total, config.warmup_steps)
    )
    generator = torch.Generator(device).manual_seed(config.seed + 1)
    bar = tqdm(range(config.flow_steps), desc="transformer", unit="step")
    for step in bar:
        now = time.monotonic()
        if step >= budget.total:
            break
        if budget.observe(step, now):
            bar.total = budget.total
            logger.info("transformer: %d steps fit %.0f s", budget.total, budget.seconds)
            log.write({"stage": "transformer", "steps_cut_to": budget.total})
        if stop_at_deadline(budget, "transformer", step, now, log):
            break
        started = time.perf_counter()
        indices = torch.randint(
            len(latents), (config.flow_batch,), generator=generator, device=device
        )
        x_t, t, target = noised(latents[indices], shift, generator)
        drop = (
            torch.rand((len(indices),), generator=generator, device=device) < config.caption_dropout
        )
        text = torch.where(drop.view(-1, 1, 1), empty, clip_text[indices])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            prediction = transformer(
                hidden_states=x_t, timestep=t, encoder_hidden_states=text, return_dict=False
            )[0]
        loss = (prediction.float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0))
        optimizer.step()
        schedule.step()
        _update_ema(ema, transformer, config.ema_decay if step >= config.warmup_steps else 0.0)
        record = {"stage": "transformer", "step": step, "loss": float(loss.detach())}
        record |= {"grad_norm": grad_norm, "lr": schedule.get_last_lr()[0]}
        record["seconds"] = time.perf_counter() - started
        log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", gnorm=f"{grad_norm:.3g}")
    return ema.cpu()
