"""Which implementation of fake quantization QAT runs: eager PyTorch or the fused Triton kernels.

Both compute the same forward values bit for bit (``qvgen.numerics``) and the same gradients up to
float32 rounding. ``AUTO`` takes the kernels for CUDA tensors on the GPUs the serving kernels
support (sm_8x, sm_9x) and eager PyTorch everywhere else; under ``TRITON_INTERPRET=1`` the
kernels run on the CPU too, which is how the tests compare the two.

The process starts with the backend named by the environment variable ``QVGEN_FAKE_QUANT``
(``auto``, ``eager`` or ``triton``; default ``auto``), so a run can be repeated with the other
implementation without a code change.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterator

import torch

from qvgen.triton_support import triton_unavailable_reason


class FakeQuantBackend(enum.Enum):
    AUTO = "auto"
    EAGER = "eager"
    TRITON = "triton"


ENV_VAR = "QVGEN_FAKE_QUANT"


def _from_environment() -> FakeQuantBackend:
    value = os.environ.get(ENV_VAR, FakeQuantBackend.AUTO.value)
    try:
        return FakeQuantBackend(value)
    except ValueError:
        allowed = ", ".join(b.value for b in FakeQuantBackend)
        raise ValueError(f"{ENV_VAR} must be one of {allowed}, got {value!r}") from None


_backend = _from_environment()


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


# Why the kernels cannot run on a CUDA device (None: they can), looked up once per device:
# every quantized layer asks on every call.
_cuda_reasons: dict[torch.device, str | None] = {}


def _unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return triton_unavailable_reason(device)
    if device not in _cuda_reasons:
        _cuda_reasons[device] = triton_unavailable_reason(device)
    return _cuda_reasons[device]


def use_triton(t: torch.Tensor) -> bool:
    """Whether fake quantization of ``t`` runs through the Triton kernels."""
    if _backend is FakeQuantBackend.EAGER:
        return False
    reason = _unavailable_reason(t.device)
    if _backend is FakeQuantBackend.TRITON and reason is not None:
        raise RuntimeError(f"fake-quant backend 'triton' cannot run here: {reason}")
    return reason is None and (t.device.type == "cuda" or _backend is FakeQuantBackend.TRITON)
