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
The stage may run in pieces, one command each: ``train_transformer`` starts from a
``flow_state.FlowState`` (fresh, or restored from an earlier piece) and leaves it where it
stopped.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from recipes.tiny_model.config import RecipeConfig
from recipes.tiny_model.flow_state import FlowState
from recipes.tiny_model.progress import JsonlLog, PieceDeadline, StepBudget, stop_at_deadline

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


class StageEnd(enum.Enum):
    COMPLETE = "complete"  # every planned step ran
    OUT_OF_TIME = "out_of_time"  # --flow-seconds spent: a one-command run ends here
    PAUSED = "paused"  # --piece-seconds spent: a later command resumes the state


@dataclass(frozen=True)
class FlowData:
    """The training set on the device: normalised latents [N, C, F, h, w], each clip's prompt
    embedding [N, L, D] (gathered once: the step indexes one tensor) and the empty prompt's [L, D]."""

    latents: torch.Tensor
    clip_text: torch.Tensor
    empty: torch.Tensor
    shift: float

    @classmethod
    def build(
        cls,
        latents: torch.Tensor,
        texts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        shift: float,
        device: torch.device,
    ) -> FlowData:
        table, prompt_index, empty = (t.to(device) for t in texts)
        return cls(latents.to(device), table[prompt_index], empty, shift)


def _train_step(state: FlowState, data: FlowData, config: RecipeConfig) -> dict[str, Any]:
    """One flow-matching step at ``state.step``; returns its log record."""
    started = time.perf_counter()
    device, generator = state.device, state.generator
    indices = torch.randint(
        len(data.latents), (config.flow_batch,), generator=generator, device=device
    )
    x_t, t, target = noised(data.latents[indices], data.shift, generator)
    drop = torch.rand((len(indices),), generator=generator, device=device) < config.caption_dropout
    text = torch.where(drop.view(-1, 1, 1), data.empty, data.clip_text[indices])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        prediction = state.transformer(
            hidden_states=x_t, timestep=t, encoder_hidden_states=text, return_dict=False
        )[0]
    loss = (prediction.float() - target).square().mean()
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.transformer.parameters(), 1.0))
    state.optimizer.step()
    state.schedule.step()
    decay = config.ema_decay if state.step >= config.warmup_steps else 0.0
    _update_ema(state.ema, state.transformer, decay)
    record = {"stage": "transformer", "step": state.step, "loss": float(loss.detach())}
    record |= {"grad_norm": grad_norm, "lr": state.schedule.get_last_lr()[0]}
    record["seconds"] = time.perf_counter() - started
    state.step += 1
    return record


def train_transformer(
    state: FlowState,
    data: FlowData,
    config: RecipeConfig,
    log: JsonlLog,
    piece_seconds: float | None = None,
) -> StageEnd:
    """Train from ``state.step`` until the plan ends or a clock stops it; ``state`` holds the
    result (the shipped weights are ``state.ema``).

    Two clocks: ``--flow-seconds`` (``StepBudget``), only for the piece that begins the stage,
    cuts the plan to fit and ends the stage at its deadline; ``piece_seconds`` pauses this
    piece without touching the plan.
    """
    budget = StepBudget(state.total, config.flow_seconds) if state.step == 0 else None
    piece = PieceDeadline(piece_seconds)
    first = state.step
    bar = tqdm(total=state.total, initial=first, desc="transformer", unit="step")
    end = StageEnd.COMPLETE
    while not state.complete:
        now = time.monotonic()
        if state.step == first:
            piece.start(now)
        if budget is not None:
            if budget.observe(state.step, now):
                state.total = bar.total = budget.total
                logger.info("transformer: %d steps fit %.0f s", budget.total, budget.seconds)
                log.write({"stage": "transformer", "steps_cut_to": budget.total})
            if stop_at_deadline(budget, "transformer", state.step, now, log):
                end = StageEnd.OUT_OF_TIME
                break
        if piece.expired(now):
            logger.info("transformer: piece of %.0f s paused at step %d", piece_seconds, state.step)
            log.write({"stage": "transformer", "paused_at": state.step, "of": state.total})
            end = StageEnd.PAUSED
            break
        record = _train_step(state, data, config)
        log.write(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", gnorm=f"{record['grad_norm']:.3g}")
    bar.close()
    return end
