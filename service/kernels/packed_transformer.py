"""Build a diffusers transformer from a format-v1 directory, without materialising its weights.

1. The class named in ``config.json`` is built with parameters on the meta device (buffers
   real, so rotary tables and the like are computed as usual).
2. Every quantized linear listed in the checkpoint replaces its ``nn.Linear`` by a
   ``LowBitLinear`` holding the packed tensors; the full-size bf16 weight is never allocated.
3. The remaining tensors are assigned with a strict key check that lists missing and
   unexpected names.
4. A forward pre-hook sets every layer's activation-clip group from the timestep
   (``qvgen.timestep_groups``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import diffusers
import torch
from accelerate import init_empty_weights
from torch import nn

from qvgen.checkpoint import CheckpointError, PackedCheckpoint, read_packed
from qvgen.linear_swap import LinearSwapError, swap_linears
from qvgen.timestep_groups import bind_timestep_groups
from service.kernels.fused_projections import fuse_attention_projections
from service.kernels.lowbit_linear import KernelBackend, LowBitLinear, build_lowbit_linear

logger = logging.getLogger(__name__)


def _transformer_class(config: dict[str, object]) -> type[nn.Module]:
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None) if name else None
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise CheckpointError(f"config.json names an unknown transformer class {name!r}")
    return cls


def _swap_in(
    model: nn.Module,
    checkpoint: PackedCheckpoint,
    device: torch.device,
    dtype: torch.dtype,
    backend: KernelBackend | None,
) -> None:
    def build(name: str, current: nn.Linear) -> nn.Module:
        layer = checkpoint.layers[name]
        if (current.in_features, current.out_features) != (layer.in_features, layer.out_features):
            raise CheckpointError(
                f"{name}: model layer is {current.in_features}→{current.out_features}, "
                f"checkpoint layer is {layer.in_features}→{layer.out_features}"
            )
        if (current.bias is not None) != (layer.bias is not None):
            raise CheckpointError(f"{name}: bias present in model and checkpoint disagree")
        # Built on the serving device: the backend is chosen from where the codes live.
        return build_lowbit_linear(layer.to(device), backend, compute_dtype=dtype)

    try:
        swap_linears(model, checkpoint.layers, build)
    except LinearSwapError as error:
        raise CheckpointError(f"quantized layer {error}") from None


def _check_keys(model: nn.Module, checkpoint: PackedCheckpoint) -> None:
    quantized_prefixes = tuple(f"{n}." for n in checkpoint.layers)
    expected = {k for k in model.state_dict() if not k.startswith(quantized_prefixes)}
    stored = set(checkpoint.tensors)
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the model: missing keys {missing}, unexpected keys {unexpected}"
        )


def load_packed_transformer(
    transformer_dir: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: KernelBackend | None = None,
    fuse_projections: bool = False,
    fuse_prologues: bool = False,
) -> nn.Module:
    """The transformer of ``transformer_dir`` with LowBitLinear layers, bound to its timesteps.

    ``dtype`` applies to the full-precision tensors; packed layers keep their stored dtypes.
    ``backend`` None picks Triton where it runs (CUDA sm_80+) and the reference elsewhere.
    ``fuse_projections``: one q/k/v (and cross-attention k/v) layer per attention
    (``fused_projections``); ``fuse_prologues``: Wan blocks whose Triton layers quantize their
    input inside the norm or GELU that makes it (``wan_block_prologues``).
    """
    checkpoint = read_packed(transformer_dir)
    cls = _transformer_class(checkpoint.config)
    config = {k: v for k, v in checkpoint.config.items() if not k.startswith("_")}
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(config)  # type: ignore[attr-defined]
    _swap_in(model, checkpoint, torch.device(device), dtype, backend)
    _check_keys(model, checkpoint)
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v) for k, v in checkpoint.tensors.items()
    }
    model.load_state_dict(state, strict=False, assign=True)
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise CheckpointError(f"parameters left without values after loading: {meta}")
    model.to(device)
    model.eval()
    if fuse_projections:
        # Before the hook is bound: it feeds the layers it finds when it is bound.
        fused = fuse_attention_projections(model)
        logger.info("fused the q/k/v (and cross-attention k/v) projections of %d attentions", fused)
    if fuse_prologues:
        # Imported here: the module needs Triton, which a reference-only install may lack.
        from service.kernels.wan_block_prologues import fuse_block_prologues

        fuse_block_prologues(model)
    bind_timestep_groups(
        model,
        checkpoint.scheme.clip_groups,
        checkpoint.scheme.num_train_timesteps,
        checkpoint.scheme.mapping,
    )
    backends = sorted({m.backend.value for m in model.modules() if isinstance(m, LowBitLinear)})
    logger.info(
        "loaded %s: %d W%dA%d layers (%s backend), %d full-precision linears",
        transformer_dir,
        len(checkpoint.layers),
        checkpoint.scheme.weight_bits,
        checkpoint.scheme.activation_bits,
        "/".join(backends),
        len(checkpoint.full_precision_modules),
    )
    return model
