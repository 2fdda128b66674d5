from __future__ import annotations

import pytest
import torch

from service.engine.environment import DeviceKind, resolve_target


def test_cpu_runs_in_float32() -> None:
    target = resolve_target("cpu")
    assert target.kind is DeviceKind.CPU
    assert target.device == torch.device("cpu")
    assert target.dtype == torch.float32
    assert target.capability is None
    assert not target.is_cuda


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", ""])
def test_malformed_device_strings_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match="cpu', 'cuda' or 'cuda:N'"):
        resolve_target(device)


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_unsupported_device_types_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match=f"has type '{device}'"):
        resolve_target(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_so() -> None:
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        resolve_target("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_in_bfloat16() -> None:
    target = resolve_target("cuda")
    assert target.is_cuda
    assert target.dtype == torch.bfloat16
    assert target.capability is not None and target.capability >= (8, 0)
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(f"cuda:{torch.cuda.device_count()}")
