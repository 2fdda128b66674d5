"""Whether the Triton kernels can run for a given device, and why not when they cannot.

The kernels are tuned for NVIDIA Ampere (sm_8x) and Hopper (sm_90). Under Triton's interpreter
(``TRITON_INTERPRET=1``) they run on the CPU, which is how CI checks them without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

logger = logging.getLogger(__name__)

# Compute-capability majors the autotuned configurations were written for.
SUPPORTED_MAJORS = (8, 9)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot serve tensors on ``device``; None when they can."""
    if not triton_installed():
        return "Triton is not installed"
    if interpreting():
        return None
    if device.type != "cuda":
        return f"device {device} is not a CUDA GPU (set TRITON_INTERPRET=1 to interpret on CPU)"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in SUPPORTED_MAJORS:
        return (
            f"GPU capability sm_{major}{minor} has no tuned configuration "
            f"(supported: sm_{SUPPORTED_MAJORS[0]}x, sm_{SUPPORTED_MAJORS[-1]}x)"
        )
    return None


@functools.cache
def log_fallback_once(reason: str) -> None:
    """Log one line per distinct reason, however many layers fall back."""
    logger.warning("low-bit kernels: Triton backend unavailable (%s); using the reference", reason)
