"""Wan blocks with the quantization fused into their norms and GELU (``wan_block_prologues``),
on the shipped packed transformer (``models/qvgen-tiny-w4a4``):

* reference layers: every input is materialized by diffusers' expressions, so the fused
  transformer is diffusers' bit for bit, eager and compiled;
* Triton layers: the fused block equals diffusers' block fed the fused kernels' own
  activations, bit for bit (so exactly wherever those equal diffusers' activations, which
  they do within one rounding of the dtype: ``test_prologue_quant.py``); compiled per block
  with ``fullgraph=True`` it equals eager, at every clip group, without recompiling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTransformerBlock
from torch import nn

pytest.importorskip("triton")

from service.kernels.fused_projections import FusionRefused
from service.kernels.lowbit_linear import KernelBackend
from service.kernels.packed_transformer import load_packed_transformer
from service.kernels.prologue import PROLOGUES, GeluTanh, NormModulation
from service.kernels.wan_block_prologues import (
    PrologueWanBlock,
    fuse_block_prologues,
    unfuse_block_prologues,
)
from tests.service.kernels.compare import assert_close_verbose
from tests.service.kernels.test_prologue_quant import assert_within_rounding

SHIPPED_TRANSFORMER = (
    Path(__file__).resolve().parents[3] / "models" / "qvgen-tiny-w4a4" / "transformer"
)
# The consumers a fused block hands a prologue to, and the prologue each gets.
SITES = {
    "attn1": NormModulation,
    "attn2": NormModulation,
    "ffn.net.0.proj": NormModulation,
    "ffn.net.2": GeluTanh,
}


def transformer_inputs(device: torch.device, dtype: torch.dtype, batch: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(batch, 8, 3, 4, 6, generator=g).to(dtype).to(device),
        "encoder_hidden_states": torch.randn(batch, 7, 64, generator=g).to(dtype).to(device),
        "return_dict": False,
    }


def predict(model: nn.Module, inputs: dict[str, Any], t: float | list[float]) -> torch.Tensor:
    """The noise prediction at timestep ``t``, or one timestep per sample."""
    device = inputs["hidden_states"].device
    timestep = torch.tensor(t if isinstance(t, list) else [t], device=device)
    with torch.no_grad():
        return model(**inputs, timestep=timestep)[0]


def load(
    device: torch.device, backend: KernelBackend, dtype: torch.dtype = torch.float32, **kw: bool
) -> nn.Module:
    return load_packed_transformer(
        SHIPPED_TRANSFORMER, device=device, dtype=dtype, backend=backend, **kw
    )


@contextmanager
def pre_hooks(model: nn.Module, hook: Callable[[str, nn.Module, tuple], Any]) -> Iterator[None]:
    """``hook(site name, module, args)`` before every site of every block."""
    handles = []
    for i, block in enumerate(model.blocks):
        for site in SITES:
            module = block.get_submodule(site)
            name = f"blocks.{i}.{site}"
            handles.append(
                module.register_forward_pre_hook(lambda m, args, n=name: hook(n, m, args))
            )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def test_reference_layers_fused_is_diffusers_bit_for_bit(device: torch.device) -> None:
    plain = load(device, KernelBackend.REFERENCE)
    fused = load(device, KernelBackend.REFERENCE, fuse_prologues=True)
    assert all(type(b) is PrologueWanBlock for b in fused.blocks)
    seen: list[type] = []
    inputs = transformer_inputs(device, torch.float32)
    with pre_hooks(fused, lambda name, m, args: seen.append(type(args[0]))):
        for t in (900.0, 30.0):
            assert_close_verbose(
                predict(fused, inputs, t), predict(plain, inputs, t), 0, 0, f"t={t}"
            )
    # No reference layer is ever handed a prologue: each input is materialized once.
    assert seen and all(kind is torch.Tensor for kind in seen)


@pytest.mark.parametrize(
    ("dtype", "fuse_projections", "timesteps"),
    [
        (torch.float32, True, [700.0]),
        (torch.float32, False, [700.0]),
        (torch.bfloat16, True, [700.0]),
        (torch.bfloat16, False, [700.0]),
        # Batched guidance: two samples, each its own modulation and clip group.
        (torch.bfloat16, True, [900.0, 20.0]),
    ],
    ids=["fp32-qkv-fused", "fp32-qkv-separate", "bf16-qkv-fused", "bf16-qkv-separate", "bf16-b2"],
)
def test_triton_fused_equals_diffusers_fed_the_kernels_activations(
    dtype: torch.dtype, fuse_projections: bool, timesteps: list[float], device: torch.device
) -> None:
    model = load(device, KernelBackend.TRITON, dtype, fuse_projections=fuse_projections)
    inputs = transformer_inputs(device, dtype, batch=len(timesteps))
    fuse_block_prologues(model)
    handed: dict[str, torch.Tensor] = {}

    def record(name: str, _module: nn.Module, args: tuple) -> None:
        site = name.split(".", 2)[2]
        assert isinstance(args[0], SITES[site]), f"{name} got {type(args[0]).__name__}"
        handed[name] = args[0].activation()
        assert_within_rounding(handed[name], args[0].materialize(), name)

    with pre_hooks(model, record):
        fused = predict(model, inputs, timesteps)
    assert len(handed) == len(SITES) * len(model.blocks)

    def substitute(name: str, _module: nn.Module, args: tuple) -> tuple:
        assert isinstance(args[0], torch.Tensor)
        return (handed[name], *args[1:])

    assert unfuse_block_prologues(model) == len(model.blocks)
    assert all(type(b) is WanTransformerBlock for b in model.blocks)
    with pre_hooks(model, substitute):
        unfused = predict(model, inputs, timesteps)
    assert_close_verbose(fused, unfused, 0, 0, f"{dtype}: fused vs diffusers on the same a")
    # The test can fail: diffusers' own activations are not all the kernels' in float32.
    if dtype == torch.float32:
        assert not torch.equal(predict(model, inputs, timesteps), fused)


def test_compiled_fused_blocks_equal_eager_at_every_group(device: torch.device) -> None:
    model = load(device, KernelBackend.TRITON, torch.bfloat16, fuse_projections=True)
    fuse_block_prologues(model)
    inputs = transformer_inputs(device, torch.bfloat16)
    timesteps = [999.0, 500.0, 10.0]
    expected = {t: predict(model, inputs, t) for t in timesteps}
    torch._dynamo.reset()
    for block in model.blocks:
        block.compile(fullgraph=True, backend="aot_eager")  # no graph break inside a block
    try:
        for index, t in enumerate(timesteps):
            with torch._dynamo.config.patch(error_on_recompile=index > 0):
                got = predict(model, inputs, t)
            assert_close_verbose(got, expected[t], 0, 0, f"compiled vs eager, t={t}")
    finally:
        for block in model.blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()
    assert not torch.equal(expected[999.0], expected[10.0])


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_reference_path_equals_eager(backend: str, device: torch.device) -> None:
    """The engine's reference path (CPU), fused and compiled per block as the engine compiles."""
    model = load(device, KernelBackend.REFERENCE, fuse_prologues=True)
    inputs = transformer_inputs(device, torch.float32)
    timesteps = [999.0, 500.0, 10.0]
    expected = {t: predict(model, inputs, t) for t in timesteps}
    torch._dynamo.reset()
    for block in model.blocks:
        block.compile(backend=backend)
    try:
        for index, t in enumerate(timesteps):
            with torch._dynamo.config.patch(error_on_recompile=index > 0):
                got = predict(model, inputs, t)
            if backend == "aot_eager":
                assert_close_verbose(got, expected[t], 0, 0, f"aot_eager vs eager, t={t}")
            else:
                # Inductor rounds the fused float32 norms differently (as it does unfused:
                # tests/service/engine/test_compiled_transformer.py).
                scale = float(expected[t].abs().max())
                assert_close_verbose(got, expected[t], 1e-5, 1e-5 * scale, f"inductor, t={t}")
    finally:
        for block in model.blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()


def test_unknown_processor_gets_the_materialized_input(device: torch.device) -> None:
    """A processor not known to pass hidden_states only to the projections never sees a
    prologue; the block then computes what diffusers' does."""

    class Recording(WanAttnProcessor):
        def __call__(self, attn: Any, hidden_states: Any, *args: Any, **kw: Any) -> torch.Tensor:
            assert not isinstance(hidden_states, PROLOGUES)
            return super().__call__(attn, hidden_states, *args, **kw)

    model = load(device, KernelBackend.TRITON, torch.bfloat16, fuse_prologues=True)
    for block in model.blocks:
        block.attn1.set_processor(Recording())
        block.attn2.set_processor(Recording())
    kinds: dict[str, type] = {}

    def record(name: str, _module: nn.Module, args: tuple) -> None:
        kinds.setdefault(name.split(".", 2)[2], type(args[0]))

    with pre_hooks(model, record):
        predict(model, transformer_inputs(device, torch.bfloat16), 400.0)
    assert kinds == {
        "attn1": torch.Tensor,
        "attn2": torch.Tensor,
        "ffn.net.0.proj": NormModulation,
        "ffn.net.2": GeluTanh,
    }


def test_refuses_a_block_it_was_not_written_for(device: torch.device) -> None:
    model = load(device, KernelBackend.REFERENCE)
    model.blocks[3].ffn.net[1] = nn.Dropout(0.1)
    with pytest.raises(FusionRefused, match=r"blocks\.3: ffn\.net\.1 is Dropout"):
        fuse_block_prologues(model)
    assert all(type(b) is WanTransformerBlock for b in model.blocks)  # nothing changed
