from __future__ import annotations

import pytest
import torch
from torch import nn

from qvgen.layer_policy import LayerPolicy
from qvgen.linear_swap import plain_linears
from tests.training.quant.tiny_transformers import tiny_cogvideox, tiny_wan
from training.quant.config import QuantScheme
from training.quant.quant_linear import QuantLinear
from training.quant.swap import quantize_linears


def test_default_policy_quantizes_block_linears_and_keeps_embedders_and_norms() -> None:
    wan = tiny_wan()
    names = quantize_linears(wan, QuantScheme(), rank=2)
    assert all(n.startswith("blocks.") for n in names)
    assert "blocks.1.ffn.net.2" in names and "blocks.0.attn2.to_k" in names
    kept = plain_linears(wan)
    assert "proj_out" in kept and any(n.startswith("condition_embedder") for n in kept)

    cog = tiny_cogvideox()
    names = quantize_linears(cog, QuantScheme(), rank=2)
    assert "transformer_blocks.0.ff.net.2" in names
    assert not [n for n in names if "norm" in n]
    assert "transformer_blocks.0.norm1.linear" in plain_linears(cog)


def test_everything_policy_matches_the_released_recipe() -> None:
    wan = tiny_wan()
    quantize_linears(wan, QuantScheme(), rank=0, policy=LayerPolicy.everything())
    assert plain_linears(wan) == []


def test_policy_selecting_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"selects no nn\.Linear"):
        quantize_linears(tiny_wan(), QuantScheme(), rank=0, policy=LayerPolicy(include=("nope.*",)))


def test_nan_weight_rejected_with_layer_name() -> None:
    linear = nn.Linear(4, 4)
    with torch.no_grad():
        linear.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"blocks\.7\.ffn: weight holds NaN or inf"):
        QuantLinear.from_linear(linear, QuantScheme(), 0, "blocks.7.ffn")


def test_wrong_input_width_named() -> None:
    layer = QuantLinear.from_linear(nn.Linear(8, 4), QuantScheme(clip_groups=1), 0, "to_q")
    layer.set_clip_group(torch.tensor([0]))
    with pytest.raises(ValueError, match=r"to_q: expected input \[\.\.\., 8\], got \(2, 5\)"):
        layer(torch.randn(2, 5))
