"""Stage 1: train the Wan VAE from scratch on clips, then measure its latent statistics.

Curriculum in clip length. Steps first train on windows of ``vae_frames`` consecutive frames
(default 9) at a random offset, then the last ``vae_full_fraction`` of the steps on whole
clips (earlier if the clock says so: whole clips start at the latest when only their planned
share of ``vae_seconds`` is left, so a stage stopped by its deadline has had them). Short windows make a step ~2× cheaper (the Wan VAE walks its causal feature cache latent
frame by latent frame, so a step's cost grows with the frame count, hardly with the batch);
the whole-clip phase is needed because the VAE does not generalise in length: a run trained
only on 9-frame windows reconstructed frames 0–8 (L1 ≈ 0.006) and broke from frame 10 on
(L1 0.06 → 1.37): the cache states of the 4th and 5th latent frames were never seen. A run
trained only on whole clips got 619 steps into its time budget and stayed blurry (weighted
L1 0.22 against 0.014).

Loss on a batch x ∈ [−1, 1]^{B×3×T×H×W} with posterior q(z | x) = N(μ, σ²):

    z ~ q(z | x),  x̂ = D(z)
    L = mean(w·|x̂ − x|) + mean(w·(x̂ − x)²) + β·mean_b KL(q ‖ N(0, I))

with w = ``object_weight`` on pixels that differ from the clip's background (the object covers
~6 % of a frame; weighting it keeps shape edges and colour sharp) and 1 elsewhere, β small
(``kl_weight``): the KL only keeps the posterior from collapsing to a point, the latent scale is
fixed afterwards by normalisation. The background colour is read from pixel (0, 0): the
generator keeps every shape a margin inside the frame, so a corner is always background.

Afterwards the per-channel mean m and standard deviation s of the posterior means μ over the
training clips are written to the VAE config (``latents_mean``, ``latents_std``): the Wan
pipeline denoises z = (μ − m) / s, which then has unit scale per channel.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from recipes.tiny_model.clips import ClipSet
from recipes.tiny_model.config import RecipeConfig
from recipes.tiny_model.progress import JsonlLog, StepBudget, stop_at_deadline, warmup_cosine

logger = logging.getLogger(__name__)

_STAT_BATCH = 64


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def pixel_weights(x: torch.Tensor, object_weight: float) -> torch.Tensor:
    """[B, 1, T, H, W]: ``object_weight`` where a pixel differs from pixel (0, 0), else 1."""
    background = x[:, :, :1, :1, :1]
    differs = (x - background).abs().amax(dim=1, keepdim=True) > 1e-3
    return 1.0 + (object_weight - 1.0) * differs.float()


def reconstruction_terms(
    reconstruction: torch.Tensor, x: torch.Tensor, object_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean(w·|x̂ − x|), mean(w·(x̂ − x)²)) with the object-weighted ``pixel_weights``."""
    w = pixel_weights(x, object_weight)
    error = reconstruction.float() - x
    return (w * error.abs()).mean(), (w * error.square()).mean()


def vae_loss(vae: nn.Module, x: torch.Tensor, config: RecipeConfig) -> dict[str, torch.Tensor]:
    posterior = vae.encode(x).latent_dist  # type: ignore[operator]
    reconstruction = vae.decode(posterior.sample()).sample  # type: ignore[operator]
    l1, l2 = reconstruction_terms(reconstruction, x, config.object_weight)
    kl = posterior.kl().mean() / x[0].numel()
    return {"loss": l1 + l2 + config.kl_weight * kl, "l1": l1, "l2": l2, "kl": kl}


def train_vae(
    vae: nn.Module, clips: ClipSet, config: RecipeConfig, device: torch.device, log: JsonlLog
) -> None:
    """Train ``vae`` in place for ``config.vae_steps`` steps."""
    vae.to(device).train()
    # A whole-clip step costs about frames / vae_frames short ones: the budget probes short
    # steps, so it scales their time by the mean cost over the curriculum.
    cost = 1.0 + config.vae_full_fraction * (config.frames / config.vae_frames - 1.0)
    budget = StepBudget(config.vae_steps, config.vae_seconds, probe_cost=cost)
    # Whole clips also start by the clock, when only their planned share of the seconds is
    # left: a stage that slows down and meets its deadline still trains on whole clips, without
    # which the VAE breaks beyond its window (module docstring).
    whole_clips_after = config.vae_seconds * (1.0 - config.vae_full_fraction) / cost
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, budget.total, config.warmup_steps)
    )
    order = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.vae_steps), desc="vae", unit="step")
    for step in bar:
        now = time.monotonic()
        if step >= budget.total:
            break
        if budget.observe(step, now):
            bar.total = budget.total
            logger.info("vae: %d steps fit %.0f s", budget.total, budget.seconds)
            log.write({"stage": "vae", "steps_cut_to": budget.total})
        if stop_at_deadline(budget, "vae", step, now, log):
            break
        started = time.perf_counter()
        indices = torch.randint(len(clips), (config.vae_batch,), generator=order)
        full = (
            step >= budget.total * (1.0 - config.vae_full_fraction)
            or budget.elapsed(now) >= whole_clips_after
        )
        length = config.frames if full else config.vae_frames
        first = int(torch.randint(config.frames - length + 1, (), generator=order))
        x = clips.video_batch(indices, device)[:, :, first : first + length]
        with _autocast(device):
            terms = vae_loss(vae, x, config)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0))
        optimizer.step()
        schedule.step()
        record: dict[str, float | int | str] = {k: float(v.detach()) for k, v in terms.items()}
        record |= {"stage": "vae", "step": step, "frames": length, "grad_norm": grad_norm}
        record |= {"lr": float(schedule.get_last_lr()[0]), "seconds": time.perf_counter() - started}
        log.write(record)
        bar.set_postfix(loss=f"{float(terms['loss']):.4f}", l1=f"{float(terms['l1']):.4f}")
    vae.eval()


@torch.no_grad()
def posterior_means(vae: nn.Module, clips: ClipSet, device: torch.device) -> torch.Tensor:
    """μ of every clip, float32 [N, C, F, h, w] on the CPU."""
    vae.to(device)
    means = []
    for start in tqdm(range(0, len(clips), _STAT_BATCH), desc="encode latents", unit="batch"):
        indices = torch.arange(start, min(start + _STAT_BATCH, len(clips)))
        x = clips.video_batch(indices, device)
        means.append(vae.encode(x).latent_dist.mode().float().cpu())  # type: ignore[operator]
    return torch.cat(means)


def set_latent_statistics(vae: nn.Module, means: torch.Tensor) -> torch.Tensor:
    """Write per-channel (m, s) of ``means`` to the VAE config; returns (μ − m) / s."""
    channel_mean = means.mean(dim=(0, 2, 3, 4))
    channel_std = means.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    vae.register_to_config(  # type: ignore[operator]
        latents_mean=[round(float(v), 6) for v in channel_mean],
        latents_std=[round(float(v), 6) for v in channel_std],
    )
    logger.info("latent statistics: mean %s, std %s", channel_mean.tolist(), channel_std.tolist())
    return normalise_latents(vae, means)


def normalise_latents(vae: nn.Module, means: torch.Tensor) -> torch.Tensor:
    """(μ − m) / s with the (m, s) of the VAE config, as the pipeline normalises them."""
    m = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)  # type: ignore[union-attr]
    s = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)  # type: ignore[union-attr]
    return (means - m) / s
