"""Fake-quant QuantLinear (Φ gone) == export → read → reference W4A4 linear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qvgen.checkpoint import CheckpointError, read_packed
from qvgen.layer_policy import LayerPolicy
from qvgen.timestep_groups import bind_timestep_groups, clip_rows
from service.kernels.lowbit_linear import KernelBackend
from service.kernels.packed_transformer import load_packed_transformer
from service.kernels.reference import packed_linear_reference
from tests.training.quant.tiny_transformers import (
    cogvideox_inputs,
    tiny_cogvideox,
    tiny_wan,
    wan_inputs,
)
from training.quant.config import QuantScheme
from training.quant.export import export_packed, pack_layer
from training.quant.quant_linear import QuantLinear
from training.quant.rank_decay import RankDecaySchedule, sync_rank_decay
from training.quant.swap import quantize_linears

REL_TOL = 1e-5
GROUPS = 6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def _trained_like_layer(bits: int, k: int, seed: int) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    layer = QuantLinear(
        "proj",
        torch.randn(13, k, generator=g),
        torch.randn(13, generator=g),
        QuantScheme(bits, bits, clip_groups=GROUPS),
        rank=min(4, k),
    )
    with torch.no_grad():  # as after training: moved scale/zero point, per-group clip tables
        layer.weight_quantizer.scale.mul_(1 + 0.1 * torch.rand(13, 1, generator=g))
        layer.weight_quantizer.zero_point.add_(torch.rand(13, 1, generator=g) - 0.5)
        layer.act_quantizer.clip_logits.add_(torch.randn(GROUPS, 2, generator=g))
    schedule = RankDecaySchedule(layer.phi_rank, 2)
    sync_rank_decay(layer, schedule, schedule.phi_free_step)
    return layer


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize(("m", "k"), [(1, 31), (5, 31), (9, 64), (1, 1)])
def test_fake_quant_equals_packed_reference_for_every_group(bits: int, m: int, k: int) -> None:
    layer = _trained_like_layer(bits, k, seed=m * 100 + k)
    packed = pack_layer(layer)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(7)) * 2
    for group in range(GROUPS):
        layer.set_clip_group(torch.tensor([group]))
        fake = layer(x).detach()
        clip = clip_rows(packed.act_clip, torch.tensor([group]), m)
        ref = packed_linear_reference(x, packed, clip)
        assert _rel(ref, fake) <= REL_TOL, f"W{bits}A{bits} M={m} K={k} group {group}"


def test_export_refuses_layer_that_still_has_phi() -> None:
    layer = QuantLinear("blocks.3.ffn", torch.randn(8, 8), None, QuantScheme(), rank=2)
    with pytest.raises(CheckpointError, match=r"blocks\.3\.ffn: Φ still has rank 2"):
        pack_layer(layer)


@pytest.mark.parametrize(
    ("build", "inputs", "bits"),
    [(tiny_wan, wan_inputs, 4), (tiny_wan, wan_inputs, 3), (tiny_cogvideox, cogvideox_inputs, 4)],
)
def test_whole_transformer_export_load_matches_fake_quant(
    tmp_path: Path, build, inputs, bits: int
) -> None:
    model = build()
    quantize_linears(model, QuantScheme(bits, bits), rank=4, policy=LayerPolicy())
    bind_timestep_groups(model, 50)
    schedule = RankDecaySchedule(4, 1)
    sync_rank_decay(model, schedule, schedule.phi_free_step)
    export_packed(model, tmp_path)
    loaded = load_packed_transformer(tmp_path, backend=KernelBackend.REFERENCE)
    for t in (999.0, 500.0, 3.0):
        kwargs = inputs(timestep=t)
        with torch.no_grad():
            fake = model(**kwargs, return_dict=False)[0]
            packed = loaded(**kwargs, return_dict=False)[0]
        assert _rel(packed, fake) <= REL_TOL, f"t={t}"
    stored = read_packed(tmp_path)
    assert stored.full_precision_modules  # the default policy keeps embedders and proj_out
    assert not [k for k in stored.tensors if ".phi." in k or k.endswith((".L", ".R"))]


def test_auto_backend_transformer_matches_fake_quant(tmp_path: Path) -> None:
    """The backend the loader picks by itself (Triton where it runs: under TRITON_INTERPRET=1
    in ``make test``, on CUDA sm_80+ on a GPU) computes the same function."""
    model = tiny_wan()
    quantize_linears(model, QuantScheme(), rank=0)
    bind_timestep_groups(model, 50)
    export_packed(model, tmp_path)
    loaded = load_packed_transformer(tmp_path)
    with torch.no_grad():
        fake = model(**wan_inputs(timestep=700.0), return_dict=False)[0]
        packed = loaded(**wan_inputs(timestep=700.0), return_dict=False)[0]
    assert _rel(packed, fake) <= REL_TOL
