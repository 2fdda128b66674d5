"""Kernel tests run on a CUDA GPU when there is one, else in Triton's CPU interpreter.

``TRITON_INTERPRET`` must be set before any kernel is decorated, so it is set here, before the
test modules import ``service.kernels``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
