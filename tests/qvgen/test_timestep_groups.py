from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler
from torch import nn

from qvgen.timestep_groups import (
    CallCountdown,
    TimestepMapping,
    bind_timestep_groups,
    restart_timestep_groups,
    timestep_to_group,
)


def test_uniform_bins_and_edges() -> None:
    t = torch.tensor([0.0, 19.99, 20.0, 500.0, 999.0, 1000.0])
    assert timestep_to_group(t, 50).tolist() == [0, 0, 1, 25, 49, 49]


@pytest.mark.parametrize("bad", [-1.0, 1000.5, float("nan")])
def test_timestep_out_of_range_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="timestep"):
        timestep_to_group(torch.tensor([bad]), 50)


class _Consumer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []

    def set_clip_group(self, groups: torch.Tensor) -> None:
        self.seen.append(groups.tolist())


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Consumer()

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return hidden_states


def test_hook_sets_group_per_sample_from_keyword_or_positional_timestep() -> None:
    model = _Model()
    bind_timestep_groups(model, 50)
    model(torch.zeros(2), timestep=torch.tensor([999.0, 10.0]))
    model(torch.zeros(2), torch.tensor([[500.0, 500.0], [20.0, 20.0]]))  # per-token timesteps
    assert model.inner.seen == [[49, 0], [25, 1]]


def test_hook_refuses_call_without_timestep() -> None:
    model = _Model()
    bind_timestep_groups(model, 50)
    with pytest.raises(ValueError, match="without a timestep"):
        model(torch.zeros(1))


def test_call_countdown_gives_wan_guidance_the_release_order() -> None:
    countdown = CallCountdown(50)
    timesteps = torch.linspace(999, 1, 50)
    cond, uncond = [], []
    for t in timesteps:  # WanPipeline: a conditional then an unconditional call per step
        cond.append(int(countdown.next_groups(t.reshape(1))[0]))
        uncond.append(int(countdown.next_groups(t.reshape(1))[0]))
    assert cond[:25] == list(range(49, 0, -2)) and set(cond[25:]) == {0}
    assert uncond[:25] == list(range(48, -1, -2)) and set(uncond[25:]) == {0}
    # A new generation starts over: explicitly, or at a timestep above the last one.
    assert int(countdown.next_groups(torch.tensor([999.0]))[0]) == 49
    countdown.restart()
    assert int(countdown.next_groups(torch.tensor([500.0]))[0]) == 49


def test_call_countdown_equals_the_timestep_bins_for_cogvideox_ddim_50_steps() -> None:
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing", num_train_timesteps=1000)
    scheduler.set_timesteps(50)
    countdown = CallCountdown(50)
    for t in scheduler.timesteps:  # guidance batched: one call, two samples, per step
        batch = t.reshape(1).repeat(2).float()
        assert countdown.next_groups(batch).tolist() == timestep_to_group(batch, 50).tolist()


def test_bound_countdown_restarts_through_a_compiled_wrapper() -> None:
    model = _Model()
    bind_timestep_groups(model, 50, mapping=TimestepMapping.CALL_COUNTDOWN)
    for t in (900.0, 900.0, 800.0):
        model(torch.zeros(1), torch.tensor([t]))
    wrapper = nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule holds
    restart_timestep_groups(wrapper)
    model(torch.zeros(1), torch.tensor([100.0]))
    assert [g[0] for g in model.inner.seen] == [49, 48, 47, 49]
