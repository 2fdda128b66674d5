"""Which activation-clip group a denoising step uses: one mapping for training and serving.

The activation quantizers keep one (α_lo, α_hi) clip pair per *timestep group*, so that the
clipping follows the statistics of each part of the denoising trajectory. The group of a
diffusion timestep t ∈ [0, T_train] (T_train = 1000 for Wan 2.1 and CogVideoX) is::

    g(t) = min(floor(t · G / T_train), G − 1)          G groups, default 50

i.e. G equal-width bins of the timestep axis. It depends on t alone — not on the number of
inference steps, the position in a sampling loop, or whether classifier-free guidance runs the
transformer twice — so training (which samples t) and serving (which receives t from the
scheduler) always agree. The released research code used ``t mod 50`` in training and a
per-call countdown at inference; those disagree under guidance, this does not.

``bind_timestep_groups`` installs a forward pre-hook on a diffusers transformer that reads the
``timestep`` argument of every forward call and hands the group of each sample to every module
that consumes one (``ClipGroupConsumer``).

A checkpoint imported from the authors' release was evaluated with their inference order
instead (``TimestepMapping.CALL_COUNTDOWN``): the c-th transformer call of a generation uses
group max(G − 1 − c, 0), whatever its timestep. For Wan (guidance as two calls a step) the
conditional call of step i gets 49 − 2i and the unconditional one 48 − 2i, down to 0 from step
25 on; for CogVideoX (guidance batched, one call a step) at 50 DDIM steps it is 49 − i, which is
g(t) of that step, so the two mappings agree there. Serving such a checkpoint with this order
gives each call the clip factors it was trained and evaluated with.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from qvgen.device_copy import shared_copy

DEFAULT_GROUPS = 50
NUM_TRAIN_TIMESTEPS = 1000


class TimestepMapping(enum.Enum):
    """How a transformer call picks its clip group; the value is stored in format v1."""

    UNIFORM_BINS = "uniform-bins-v1"  # g(t) = min(⌊t·G/T_train⌋, G − 1)
    CALL_COUNTDOWN = "call-countdown-v1"  # the c-th call of a generation: max(G − 1 − c, 0)


MAPPING_NAME = TimestepMapping.UNIFORM_BINS.value


def timestep_to_group(
    timestep: torch.Tensor | float, groups: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """g(t) for a scalar or a tensor of timesteps; returns int64 of the same shape.

    Raises ``ValueError`` for a timestep outside [0, num_train_timesteps] or a non-finite one.
    """
    if groups < 1:
        raise ValueError(f"groups must be ≥ 1, got {groups}")
    t = torch.as_tensor(timestep, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"timestep must be finite, got {t.tolist()}")
    if (t < 0).any() or (t > num_train_timesteps).any():
        raise ValueError(
            f"timestep must lie in [0, {num_train_timesteps}], got {t.min().item()}..{t.max().item()}"
        )
    g = torch.floor(t * groups / num_train_timesteps).to(torch.int64)
    return torch.clamp(g, max=groups - 1)


@runtime_checkable
class ClipGroupConsumer(Protocol):
    """A module whose activation quantizer needs the current timestep group of each sample."""

    def set_clip_group(self, groups: torch.Tensor) -> None:
        """``groups``: int64 [B], the group of each sample of the next forward call."""


def _per_sample_timestep(timestep: torch.Tensor) -> torch.Tensor:
    # Wan 2.2-style pipelines pass one timestep per token ([B, S]); all tokens of a sample
    # share the step's clip group, read from the first token. The groups go to the CPU once per
    # transformer call, so no quantized layer ever waits on the GPU to read them.
    t = timestep.detach().to("cpu")
    if t.ndim == 0:
        return t.reshape(1)
    return t.reshape(t.shape[0], -1)[:, 0]


class CallCountdown:
    """Group of the c-th transformer call of a generation: max(G − 1 − c, 0) for every sample.

    A generation starts at ``restart`` (the engine calls it before each one) or, for callers
    that never do, at the first call whose timestep is above the previous call's: timesteps
    only fall within a generation, and both calls of a guided step share one.
    """

    def __init__(self, groups: int) -> None:
        if groups < 1:
            raise ValueError(f"groups must be ≥ 1, got {groups}")
        self.groups = groups
        self.calls = 0
        self._last_timestep: float | None = None

    def restart(self) -> None:
        self.calls = 0
        self._last_timestep = None

    def skip(self, calls: int) -> None:
        """Count ``calls`` calls that did not happen (a guidance pass left out), so that the
        calls after them get the groups they get in the generation that runs them all."""
        if calls < 0:
            raise ValueError(f"calls must be ≥ 0, got {calls}")
        self.calls += calls

    def next_groups(self, timestep: torch.Tensor) -> torch.Tensor:
        """int64 [B] for a call with per-sample timesteps ``timestep`` [B]."""
        top = float(timestep.max())
        if self._last_timestep is not None and top > self._last_timestep:
            self.calls = 0
        self._last_timestep = top
        group = max(self.groups - 1 - self.calls, 0)
        self.calls += 1
        return torch.full((timestep.numel(),), group, dtype=torch.int64)


# The countdown of a bound transformer, found by ``restart_timestep_groups``.
_COUNTDOWN_ATTRIBUTE = "_qvgen_call_countdown"


def bind_timestep_groups(
    transformer: nn.Module,
    groups: int,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    mapping: TimestepMapping = TimestepMapping.UNIFORM_BINS,
) -> RemovableHandle:
    """Set each consumer's clip group on every forward call of ``transformer``: from
    ``timestep`` (``UNIFORM_BINS``), or from the call's place in the generation
    (``CALL_COUNTDOWN``, module docstring).

    Works with diffusers' Wan and CogVideoX transformers, which take ``timestep`` as their second
    argument or as a keyword. The hook always runs eagerly, also when the transformer is
    compiled (``torch.compiler.disable``): it reads the timestep on the host and validates it,
    which a traced graph cannot do. Consumers that a compiled graph reads must therefore keep
    the state they are handed in tensors the graph takes as inputs (``LowBitLinear`` writes
    its clip rows into a buffer in place), never as Python values a trace would bake in.
    """
    consumers = [m for m in transformer.modules() if isinstance(m, ClipGroupConsumer)]
    countdown = CallCountdown(groups) if mapping is TimestepMapping.CALL_COUNTDOWN else None
    setattr(transformer, _COUNTDOWN_ATTRIBUTE, countdown)

    @torch.compiler.disable
    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if timestep is None:
            raise ValueError("the transformer was called without a timestep: no clip group to use")
        t = _per_sample_timestep(torch.as_tensor(timestep))
        g = timestep_to_group(t, groups, num_train_timesteps)  # validates t in both mappings
        if countdown is not None:
            g = countdown.next_groups(t)
        for consumer in consumers:
            consumer.set_clip_group(g)

    return transformer.register_forward_pre_hook(hook, with_kwargs=True)


def restart_timestep_groups(transformer: nn.Module) -> None:
    """Mark the start of a generation for a transformer bound with ``CALL_COUNTDOWN`` (a no-op
    for the timestep mapping); a compiled transformer is looked through."""
    module = getattr(transformer, "_orig_mod", transformer)
    countdown = getattr(module, _COUNTDOWN_ATTRIBUTE, None)
    if isinstance(countdown, CallCountdown):
        countdown.restart()


def skip_timestep_group_calls(transformer: nn.Module, calls: int) -> None:
    """For a transformer bound with ``CALL_COUNTDOWN``, count ``calls`` transformer calls that a
    policy left out (``CallCountdown.skip``); a no-op for the timestep mapping, whose group
    follows the timestep alone."""
    module = getattr(transformer, "_orig_mod", transformer)
    countdown = getattr(module, _COUNTDOWN_ATTRIBUTE, None)
    if isinstance(countdown, CallCountdown):
        countdown.skip(calls)


def check_groups(groups: torch.Tensor, n_groups: int) -> None:
    """Raise ``ValueError`` unless every entry of ``groups`` (a CPU tensor) is in [0, G − 1]."""
    values = groups.tolist()
    if not values or min(values) < 0 or max(values) >= n_groups:
        raise ValueError(f"clip group {values} outside [0, {n_groups - 1}]")


def expand_clip_rows(sample_clip: torch.Tensor, rows_per_sample: int) -> torch.Tensor:
    """Per-sample clip factors [B, 2] → per-row [B · rows_per_sample, 2].

    One sample (every denoising call of a served request without batched guidance) gives a
    stride-0 view: no copy. Reads no value, so it traces into a graph as it is.
    """
    if sample_clip.shape[0] == 1:
        return sample_clip.expand(rows_per_sample, 2)
    return sample_clip.repeat_interleave(rows_per_sample, dim=0)


def clip_rows(act_clip: torch.Tensor, groups: torch.Tensor, rows_per_sample: int) -> torch.Tensor:
    """Per-row clip factors [B · rows_per_sample, 2] for samples in timestep groups ``groups`` [B].

    ``act_clip`` is a layer's [G, 2] table of (α_lo, α_hi); ``groups`` (int64) lives on the CPU
    (the timestep hook puts it there once per transformer call), so checking it never waits for
    the GPU. Gradients reach ``act_clip`` through the indexing. When every sample shares one
    group, the result is a stride-0 view of one table row: no gather, no copy, no host-device
    transfer.
    """
    check_groups(groups, act_clip.shape[0])
    values = groups.tolist()
    if len(set(values)) == 1:
        return act_clip[values[0]].expand(len(values) * rows_per_sample, 2)
    # Every layer of a call receives the same groups tensor: one device copy serves them all.
    return expand_clip_rows(act_clip[shared_copy(groups, act_clip.device)], rows_per_sample)
