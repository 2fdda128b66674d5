"""One host-to-device copy of a small CPU tensor, shared by every layer that asks for it.

The timestep groups of a forward call and the rank-decay γ of a step are small CPU tensors that
every quantized layer needs on the GPU. A blocking copy from pageable memory makes the host wait
for the GPU to drain its queue; one per layer, 300 layers, is 300 such waits per forward call,
and the GPU idles after each while the host launches the next kernels. Here the first layer's
request copies from pinned memory without blocking and the others reuse that copy.
"""

from __future__ import annotations

import torch

# Recent copies: (source tensor, its copy). A source is matched by identity, so a caller that
# builds a new tensor gets a new copy; a handful of entries cover the tensors of one step.
_RECENT = 8
_recent: list[tuple[torch.Tensor, torch.Tensor]] = []


def shared_copy(source: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``source`` (a CPU tensor the caller will not modify) on ``device``."""
    if source.device == device:
        return source
    for src, copy in _recent:
        if src is source and copy.device == device:
            return copy
    staged = source.pin_memory() if device.type == "cuda" else source
    copy = staged.to(device, non_blocking=device.type == "cuda")
    _recent.append((source, copy))
    del _recent[:-_RECENT]
    return copy
