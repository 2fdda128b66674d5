"""A state dict in the QVGen authors' layout imports and reproduces its fake-quant forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qvgen.checkpoint import CheckpointError
from qvgen.checkpoint.import_release import import_release, import_release_state
from qvgen.timestep_groups import bind_timestep_groups
from service.kernels.lowbit_linear import KernelBackend
from service.kernels.packed_transformer import load_packed_transformer
from tests.training.quant.tiny_transformers import tiny_wan, wan_inputs
from training.quant.config import QuantScheme
from training.quant.export import diffusers_config
from training.quant.quant_linear import QuantLinear
from training.quant.swap import quantize_linears

LORA_RANK = 2


def _release_layout(model: torch.nn.Module, with_lora: bool) -> dict[str, torch.Tensor]:
    """What the release stores: latent w (minus the LoRA product when present), b, quantizer
    parameters ([out, 1]) and 50 lower/upper clip logits per layer."""
    quantized = {m.name: m for m in model.modules() if isinstance(m, QuantLinear)}
    state = {
        k: v
        for k, v in model.state_dict().items()
        if not any(k.startswith(f"{name}.") for name in quantized)
    }
    g = torch.Generator().manual_seed(5)
    for name, layer in quantized.items():
        weight = layer.weight.detach().clone()
        if with_lora:
            a = torch.randn(LORA_RANK, layer.in_features, generator=g) * 0.01
            b = torch.randn(layer.out_features, LORA_RANK, generator=g) * 0.01
            state[f"{name}.loraA.weight"], state[f"{name}.loraB.weight"] = a, b
            weight = weight - b @ a
        state[f"{name}.w"] = weight
        if layer.bias is not None:
            state[f"{name}.b"] = layer.bias.detach().clone()
        state[f"{name}.wquantizer.scale"] = layer.weight_quantizer.scale.detach().clone()
        state[f"{name}.wquantizer.zero_point"] = layer.weight_quantizer.zero_point.detach().clone()
        logits = layer.act_quantizer.clip_logits.detach()
        state[f"{name}.aquantizer.lower"] = logits[:, 0].clone()
        state[f"{name}.aquantizer.upper"] = logits[:, 1].clone()
    return state


def _student() -> torch.nn.Module:
    model = tiny_wan()
    quantize_linears(model, QuantScheme(), rank=0)
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, QuantLinear):
            with torch.no_grad():
                m.act_quantizer.clip_logits.add_(torch.randn(50, 2, generator=g))
    bind_timestep_groups(model, 50)
    return model


@pytest.mark.parametrize("with_lora", [False, True])
def test_release_checkpoint_imports_and_reproduces_fake_quant(
    tmp_path: Path, with_lora: bool
) -> None:
    student = _student()
    save_file(_release_layout(student, with_lora), str(tmp_path / "release.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(diffusers_config(student)))
    import_release(
        tmp_path / "release.safetensors", tmp_path / "config.json", tmp_path / "v1", 4, 4
    )
    packed = load_packed_transformer(tmp_path / "v1", backend=KernelBackend.REFERENCE)
    for t in (990.0, 120.0):
        with torch.no_grad():
            want = student(**wan_inputs(timestep=t), return_dict=False)[0]
            got = packed(**wan_inputs(timestep=t), return_dict=False)[0]
        assert ((got - want).norm() / want.norm()).item() < 1e-4, f"t={t}"


def test_release_layout_errors_name_the_layer() -> None:
    student = _student()
    state = _release_layout(student, with_lora=True)
    del state["blocks.0.attn1.to_q.loraB.weight"]
    with pytest.raises(
        CheckpointError, match=r"blocks\.0\.attn1\.to_q: loraA and loraB must come together"
    ):
        import_release_state(state, diffusers_config(student), 4, 4)
    with pytest.raises(CheckpointError, match="not a QVGen release checkpoint"):
        import_release_state({"x.weight": torch.zeros(2, 2)}, diffusers_config(student), 4, 4)
