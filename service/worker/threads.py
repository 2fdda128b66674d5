"""CPU threads per worker: workers sharing a machine split its cores instead of each taking all.

torch sizes its thread pool to every core by default; two CPU workers side by side then run
twice the threads the machine has and spend their time contending (``serve all`` with two CPU
workers ran 4.3× slower than with one thread each). ``serve all`` gives each worker
``cores ÷ workers`` threads (``ServiceSettings.worker_threads`` overrides it), through the
worker's settings and the OpenMP and MKL variables, which take effect before torch starts.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

# Read by the OpenMP and MKL runtimes when torch loads them.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(configured: int, workers: int) -> int:
    return configured if configured > 0 else max(1, available_cores() // workers)


def thread_environment(threads: int) -> dict[str, str]:
    """What a worker process's environment needs to run ``threads`` CPU threads."""
    return {"QVGEN_WORKER_THREADS": str(threads)} | dict.fromkeys(_THREAD_VARIABLES, str(threads))


def limit_torch_threads(threads: int) -> None:
    """Size torch's intra-op pool, if this process uses torch at all (the no-op engine does
    not, and is not made to import it)."""
    torch = sys.modules.get("torch")
    if torch is None or threads <= 0:
        return
    torch.set_num_threads(threads)
    logger.info("torch runs %d CPU threads", threads)
