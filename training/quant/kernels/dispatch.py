"""Which implementation of fake quantization QAT runs: eager PyTorch or the fused Triton kernels.

Both compute the same forward values bit for bit (``qvgen.numerics``) and the same gradients up to
float32 rounding. ``AUTO`` takes the kernels for CUDA tensors on the GPUs the serving kernels
support (sm_8x, sm_9x) and eager PyTorch everywhere else; under ``TRITON_INTERPRET=1`` the
kernels run on the CPU too, which is how the tests compare the two.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

import torch

from service.kernels.triton_support import triton_unavailable_reason


class FakeQuantBackend(enum.Enum):
    AUTO = "auto"
    EAGER = "eager"
    TRITON = "triton"


_backend = FakeQuantBackend.AUTO


def set_fake_quant_backend(backend: FakeQuantBackend) -> None:
    """Choose the implementation for every quantizer of this process."""
    global _backend
    _backend = backend


@contextlib.contextmanager
def fake_quant_backend(backend: FakeQuantBackend) -> Iterator[None]:
    previous = _backend
    set_fake_quant_backend(backend)
    try:
        yield
    finally:
        set_fake_quant_backend(previous)


def use_triton(t: torch.Tensor) -> bool:
    """Whether fake quantization of ``t`` runs through the Triton kernels."""
    if _backend is FakeQuantBackend.EAGER:
        return False
    reason = triton_unavailable_reason(t.device)
    if _backend is FakeQuantBackend.TRITON and reason is not None:
        raise RuntimeError(f"fake-quant backend 'triton' cannot run here: {reason}")
    return reason is None and (t.device.type == "cuda" or _backend is FakeQuantBackend.TRITON)
