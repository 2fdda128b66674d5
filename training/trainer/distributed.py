"""One process or many: ``torchrun`` detection, DDP or FSDP wrapping, gradient clipping.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains the same student on its slice of
the global batch. Two strategies:

* DDP: each process holds the whole student; gradients are all-reduced (mean).
* FSDP (FSDP2 ``fully_shard``, one unit per transformer block plus the root): parameters,
  gradients and Adam moments are sharded over the processes — for models whose training state
  does not fit one GPU. The frozen teacher is sharded the same way.

Φ is left out of both (DDP's ignore list, FSDP's ``ignored_params``) and kept replicated, its
gradients averaged by ``sync_phi_gradients``: rank decay replaces Φ's modules at every phase
boundary, which neither wrapper allows for parameters it manages, and Φ is tiny
(r·(N + K) values per layer). Its replacement tensors then simply stay outside the wrappers.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from training.trainer.config import Parallelism

logger = logging.getLogger(__name__)

_BLOCK_LISTS = ("blocks", "transformer_blocks")  # Wan 2.1, CogVideoX


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None) -> DistContext:
    """Join the ``torchrun`` process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible to this process")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    elif wanted == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"--device must be 'cuda' or 'cpu', got {wanted!r}")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local, dev)


def phi_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".phi." in n]


def _blocks(model: nn.Module) -> list[nn.Module]:
    for name in _BLOCK_LISTS:
        blocks = getattr(model, name, None)
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    raise ValueError(f"{type(model).__name__} has no block list {_BLOCK_LISTS} to shard")


def shard(model: nn.Module, ctx: DistContext) -> nn.Module:
    """FSDP2 units per block and at the root; Φ stays replicated (module docstring).

    ``fully_shard`` moves each process's shards to its device, so the whole model never has to
    fit one device; Φ, which FSDP ignores, is moved here. Parameters are gathered in their own
    dtype (float32 for the student, as on one process; bf16 autocast does the compute), so the
    quantizer arithmetic is the same as without FSDP.
    """
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    ignored = {p for n, p in model.named_parameters() if ".phi." in n}
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, ignored_params=ignored)
    fully_shard(model, mesh=mesh, ignored_params=ignored)
    for name, module in model.named_modules():
        if name.endswith(".phi"):
            module.to(ctx.device)
    return model


def wrap_student(model: nn.Module, ctx: DistContext, parallel: Parallelism) -> nn.Module:
    """The module to call in the training step (the student itself on one process)."""
    if not ctx.distributed:
        return model
    if parallel is Parallelism.FSDP:
        return shard(model, ctx)
    ignore = phi_parameter_names(model) + [n for n, _ in model.named_buffers() if ".phi." in n]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_phi_gradients(model: nn.Module, ctx: DistContext) -> None:
    """Average Φ's gradients over the processes (one coalesced all-reduce)."""
    if not ctx.distributed:
        return
    grads = [
        p.grad for n, p in unwrap(model).named_parameters() if ".phi." in n and p.grad is not None
    ]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _sum_of_squares(grads: list[torch.Tensor]) -> float:
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm) ** 2


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is ≤ ``max_norm``; return the norm before.

    Sharded (DTensor) and replicated gradients are measured separately and combined, since the
    two kinds cannot share one norm computation.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    sharded = [p.grad for p in params if isinstance(p.grad, DTensor)]
    plain = [p.grad for p in params if not isinstance(p.grad, DTensor)]
    total = math.sqrt(_sum_of_squares(sharded) + _sum_of_squares(plain))  # type: ignore[arg-type]
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            assert p.grad is not None
            p.grad.mul_(coef)
    return total


def mean_over_processes(value: torch.Tensor, ctx: DistContext) -> float:
    value = value.detach()
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return float(value)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
