"""The FP8 rowwise peer's layer: the method it claims, on the CPU's ``_scaled_mm``."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.fp8_linear import E4M3_MAX, Fp8RowwiseLinear, to_fp8_rowwise
from qvgen.layer_policy import LayerPolicy


def test_layer_computes_the_rowwise_scaled_product() -> None:
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(2, 16, 64, generator=g).to(torch.bfloat16)
    layer = Fp8RowwiseLinear(linear)
    y = layer(x)
    assert y.shape == (2, 16, 48) and y.dtype == torch.bfloat16
    # The same codes and scales, multiplied out in float32 (fast accumulation aside).
    x2d = x.reshape(-1, 64).float()
    x_scale = x2d.abs().amax(dim=1, keepdim=True) / E4M3_MAX
    x_codes = (x2d / x_scale).to(torch.float8_e4m3fn).float()
    w_codes = layer.weight.float()
    expected = (x_codes @ w_codes.t()) * x_scale * layer.weight_scale + linear.bias.float()
    torch.testing.assert_close(y.reshape(-1, 48).float(), expected, rtol=2**-7, atol=1e-2)
    # And near the bf16 product: e4m3 keeps 3 mantissa bits.
    exact = linear(x).float()
    assert (y.float() - exact).norm() < 0.08 * exact.norm()


def test_swap_takes_exactly_the_policy_linears() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.ModuleDict({"ffn": nn.Linear(32, 32)})])
            self.proj_out = nn.Linear(32, 32)

    model = Block()
    impl = to_fp8_rowwise(model)
    swapped = model.blocks[0]["ffn"]
    if impl.startswith("qvgen"):
        assert isinstance(swapped, Fp8RowwiseLinear)
    else:  # torchao keeps the nn.Linear and makes its weight an FP8 tensor subclass
        assert type(swapped.weight) is not nn.Parameter
    assert type(model.proj_out) is nn.Linear and type(model.proj_out.weight) is nn.Parameter
    assert not LayerPolicy().selects("proj_out")
