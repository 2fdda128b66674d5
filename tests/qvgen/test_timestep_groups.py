from __future__ import annotations

import pytest
import torch
from torch import nn

from qvgen.timestep_groups import bind_timestep_groups, timestep_to_group


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
