from __future__ import annotations

import pytest
import torch

from training.quant.config import QuantScheme
from training.quant.phi import LowRankBranch
from training.quant.quant_linear import QuantLinear
from training.quant.rank_decay import DecayShape, RankDecaySchedule, sync_rank_decay

# Dropping a component whose γ reached 0 and re-decomposing the kept product by SVD is exact
# up to float32 round-off; this bounds the relative change of the layer output at a boundary.
BOUNDARY_TOLERANCE = 1e-5


def _layer(rank: int = 8, bits: int = 4, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(24, 40, generator=g)
    return QuantLinear(
        "layer", weight, torch.randn(24, generator=g), QuantScheme(bits, bits, clip_groups=4), rank
    )


@pytest.mark.parametrize("bits", [3, 4])
def test_svd_init_absorbs_part_of_the_quantization_error(bits: int) -> None:
    with_phi, without = _layer(rank=8, bits=bits), _layer(rank=0, bits=bits)
    assert with_phi.quantization_error() < 0.9 * without.quantization_error()


def test_schedule_ranks_and_phase_lengths() -> None:
    schedule = RankDecaySchedule(32, 444)
    assert schedule.ranks == (32, 16, 8, 4, 2, 1, 0)
    assert schedule.phi_free_step == 6 * 444
    assert RankDecaySchedule.for_total_steps(32, 2667).phase_steps == 444
    assert [schedule.rank_at(s) for s in (0, 443, 444, 2663, 2664, 10_000)] == [32, 32, 16, 1, 0, 0]
    with pytest.raises(ValueError, match="phase_steps must be an integer ≥ 1"):
        RankDecaySchedule(32, 0)


@pytest.mark.parametrize("shape", list(DecayShape))
def test_gamma_keeps_top_half_and_decays_bottom_half_to_zero(shape: DecayShape) -> None:
    schedule = RankDecaySchedule(8, 10, shape)
    first, last = schedule.gamma(0), schedule.gamma(9)
    assert torch.equal(first[:4], torch.ones(4)) and torch.equal(last[:4], torch.ones(4))
    assert (first[4:] < 1).all() and (first[4:] >= 0.9).all()
    assert torch.equal(last[4:], torch.zeros(4))
    mid = [schedule.gamma(s)[-1].item() for s in range(10)]
    assert mid == sorted(mid, reverse=True)
    assert schedule.gamma(19).tolist() == [1, 1, 0, 0]  # next phase: rank 4, two decay


def test_boundaries_change_output_within_tolerance_and_phi_ends_gone() -> None:
    layer = _layer(rank=8)
    layer.set_clip_group(torch.tensor([2]))
    schedule = RankDecaySchedule(8, 5)
    x = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(1))
    sync_rank_decay(layer, schedule, 0)
    for step in range(1, schedule.phi_free_step + 1):
        before = layer(x).detach()
        changed = sync_rank_decay(layer, schedule, step)
        assert changed == (step % 5 == 0)
        if changed:
            # The boundary itself (drop the components whose γ reached 0, re-SVD the rest) must
            # not move the output; the new phase's first decay step is training, not boundary.
            if layer.phi is not None:
                layer.phi.set_gamma(torch.ones(layer.phi_rank))
            after = layer(x).detach()
            rel = ((after - before).norm() / before.norm()).item()
            assert rel < BOUNDARY_TOLERANCE, f"step {step}: output moved by {rel:.2e}"
            sync_rank_decay(layer, schedule, step)
    assert layer.phi is None
    assert not [k for k in layer.state_dict() if k.startswith("phi.")]
    assert not [n for n, _ in layer.named_parameters() if n.startswith("phi.")]


def test_sync_is_idempotent_and_jumps_to_any_step() -> None:
    schedule = RankDecaySchedule(8, 5)
    stepped, jumped = _layer(rank=8), _layer(rank=8)
    for step in range(13):
        sync_rank_decay(stepped, schedule, step)
    sync_rank_decay(jumped, schedule, 12)
    sync_rank_decay(jumped, schedule, 12)
    assert stepped.phi_rank == jumped.phi_rank == 2
    assert torch.equal(stepped.phi.gamma, jumped.phi.gamma)  # type: ignore[union-attr]


def test_truncated_reorders_by_singular_value() -> None:
    g = torch.Generator().manual_seed(0)
    branch = LowRankBranch(torch.randn(12, 6, generator=g), torch.randn(6, 10, generator=g))
    kept = branch.truncated(3)
    assert kept is not None and kept.rank == 3
    expected = branch.L[:, :3] @ branch.R[:3]
    torch.testing.assert_close(kept.delta_weight(), expected, rtol=1e-5, atol=1e-5)
    norms = kept.L.norm(dim=0) * kept.R.norm(dim=1)
    assert norms.tolist() == sorted(norms.tolist(), reverse=True)
    assert branch.truncated(0) is None
