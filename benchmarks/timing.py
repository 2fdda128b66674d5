"""One way to time a callable in the benchmarks: CUDA events on a GPU, the wall clock elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def time_ms(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Time of ``fn`` in ms, ``repeats`` times after ``warmup`` calls.

    On CUDA each time runs from an event recorded before the call to one recorded after it,
    read once the second has completed, so it covers the GPU work the call queued and any host
    time the GPU waited through (a host-bound step shows as such).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    return times
