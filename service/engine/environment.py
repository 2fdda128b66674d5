"""Where a pipeline will run: the device, its capability and the compute dtype, checked up front.

Loading a 14B transformer only to fail on the first forward call wastes minutes; everything that
can be known about the machine is checked here, before a byte of weights is read.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# bf16 matmuls (and the Triton W4A4 kernels) need Ampere or newer.
MIN_CUDA_CAPABILITY = (8, 0)


class DeviceKind(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class RuntimeTarget:
    """A checked device and the dtype that pipelines run in there.

    ``dtype`` is bfloat16 on CUDA (what Wan 2.1 and CogVideoX were trained in) and float32 on
    CPU (bf16 matmuls on CPU are slow and not reproducible across ISAs). ``capability`` is the
    CUDA compute capability, ``None`` on CPU.
    """

    device: torch.device
    kind: DeviceKind
    dtype: torch.dtype
    capability: tuple[int, int] | None
    name: str

    @property
    def is_cuda(self) -> bool:
        return self.kind is DeviceKind.CUDA


def _parse_device(device: str) -> torch.device:
    allowed = "'cpu', 'cuda' or 'cuda:N'"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device string; use {allowed}") from err
    if parsed.type not in {k.value for k in DeviceKind}:
        raise ValueError(f"device {device!r} has type {parsed.type!r}; use {allowed}")
    return parsed


def _check_cuda(device: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(device)!r} asked for, but this torch ({torch.__version__}) sees no CUDA "
            "device; use device 'cpu'"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < count:
        raise ValueError(f"CUDA device index {index} out of range [0, {count - 1}]")
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CUDA_CAPABILITY:
        raise RuntimeError(
            f"cuda:{index} ({torch.cuda.get_device_name(index)}) has compute capability "
            f"sm_{capability[0]}{capability[1]}; bf16 generation needs sm_"
            f"{MIN_CUDA_CAPABILITY[0]}{MIN_CUDA_CAPABILITY[1]} or newer"
        )
    return torch.device("cuda", index)


def resolve_target(device: str = "cpu") -> RuntimeTarget:
    """Check ``device`` ('cpu', 'cuda', 'cuda:N') and pick the dtype to run in.

    Raises ``ValueError`` for a malformed device string or an index out of range, and
    ``RuntimeError`` when CUDA is asked for but absent or older than sm_80.
    """
    parsed = _parse_device(device)
    if parsed.type == DeviceKind.CPU.value:
        target = RuntimeTarget(
            device=torch.device("cpu"),
            kind=DeviceKind.CPU,
            dtype=torch.float32,
            capability=None,
            name="cpu",
        )
    else:
        checked = _check_cuda(parsed)
        index = checked.index if checked.index is not None else 0
        target = RuntimeTarget(
            device=checked,
            kind=DeviceKind.CUDA,
            dtype=torch.bfloat16,
            capability=torch.cuda.get_device_capability(index),
            name=torch.cuda.get_device_name(index),
        )
    logger.info("runtime target: %s (%s), dtype %s", target.device, target.name, target.dtype)
    return target
